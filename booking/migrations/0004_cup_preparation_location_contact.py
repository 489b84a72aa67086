import django.core.validators
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("archive", "0016_report_signed_at_index"),
        ("booking", "0003_booking_priority"),
    ]

    operations = [
        migrations.AddField(
            model_name="procedure",
            name="preparation",
            field=models.TextField(
                blank=True,
                help_text="Che cosa fa il paziente prima dell'esame (digiuno, oggetti metallici, esami da portare): è stampato sulla ricevuta. Si rivolge al paziente con il Lei.",
                verbose_name="preparazione",
            ),
        ),
        migrations.AddField(
            model_name="station",
            name="location",
            field=models.CharField(
                blank=True,
                help_text="Reparto, edificio e piano dove si presenta il paziente, es. «Radiologia, piano terra, torre medica»: è stampato sulla ricevuta.",
                max_length=200,
                verbose_name="dove si trova",
            ),
        ),
        migrations.CreateModel(
            name="FacilityContact",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "address",
                    models.CharField(
                        help_text="Via, numero civico, CAP e comune.", max_length=200, verbose_name="indirizzo"
                    ),
                ),
                (
                    "cup_phone",
                    models.CharField(
                        help_text="Il numero che il paziente chiama per spostare o disdire l'appuntamento.",
                        max_length=32,
                        validators=[
                            django.core.validators.RegexValidator(
                                "^\\+?[0-9][0-9 ./()-]{4,30}$",
                                "Un numero di telefono: cifre, spazi e + . / - ( ), es. 040 399 1111.",
                            )
                        ],
                        verbose_name="telefono del CUP",
                    ),
                ),
                (
                    "cup_hours",
                    models.CharField(
                        blank=True,
                        help_text="es. «dal lunedì al venerdì, 8:00–17:00»",
                        max_length=100,
                        verbose_name="orari del CUP",
                    ),
                ),
                (
                    "facility",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="cup_contact",
                        to="archive.facility",
                        verbose_name="presidio",
                    ),
                ),
            ],
            options={
                "verbose_name": "recapiti del presidio",
                "verbose_name_plural": "recapiti dei presidi",
                "ordering": ["facility__code"],
            },
        ),
    ]
