from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("booking", "0002_history_append_only"),
    ]

    operations = [
        migrations.AddField(
            model_name="booking",
            name="priority",
            field=models.CharField(
                choices=[
                    ("U", "U – urgente (entro 72 ore)"),
                    ("B", "B – breve (entro 10 giorni)"),
                    ("D", "D – differita"),
                    ("P", "P – programmata"),
                ],
                db_index=True,
                default="P",
                max_length=1,
                verbose_name="priorità",
            ),
        ),
    ]
