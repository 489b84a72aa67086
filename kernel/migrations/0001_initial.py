"""The audit log's models, taken over from the archive (archive 0015): state only.

Their tables keep the names, indexes, constraints and triggers the archive gave
them: no statement touches them. Their content types move from ``archive`` to
``kernel`` (same rows, so the permissions and groups that hold
``view_auditevent`` keep it, now named ``kernel.view_auditevent``). On a new
database there is nothing to move yet: the content types are made after the
migrations, already under ``kernel``.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MODELS = ("auditevent", "auditeventpatient")


def content_types_move(source, target):
    def move(apps, schema_editor):
        ContentType = apps.get_model("contenttypes", "ContentType")
        db = schema_editor.connection.alias
        types = ContentType.objects.using(db)
        for model in MODELS:
            # A row already under the target (made by a migrate that ran the
            # apps' post_migrate in between) is left alone, not duplicated.
            if not types.filter(app_label=target, model=model).exists():
                types.filter(app_label=source, model=model).update(app_label=target)

    return move


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("archive", "0015_audit_models_to_kernel"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("at", models.DateTimeField(db_index=True, verbose_name="quando")),
                        ("username", models.CharField(blank=True, max_length=150, verbose_name="nome utente")),
                        ("ae_title", models.CharField(blank=True, max_length=16, verbose_name="AE title")),
                        ("system", models.CharField(blank=True, max_length=64, verbose_name="processo di sistema")),
                        ("action", models.CharField(db_index=True, max_length=64, verbose_name="azione")),
                        (
                            "outcome",
                            models.CharField(
                                choices=[
                                    ("success", "riuscito"),
                                    ("warning", "con avvisi"),
                                    ("failure", "fallito"),
                                    ("denied", "negato"),
                                ],
                                max_length=16,
                                verbose_name="esito",
                            ),
                        ),
                        (
                            "study_instance_uid",
                            models.CharField(blank=True, max_length=64, verbose_name="StudyInstanceUID"),
                        ),
                        ("source", models.CharField(blank=True, max_length=255, verbose_name="da dove")),
                        ("detail", models.JSONField(blank=True, default=dict, verbose_name="dettaglio")),
                        ("chain", models.CharField(blank=True, default="", max_length=32, verbose_name="catena")),
                        (
                            "seq",
                            models.PositiveBigIntegerField(blank=True, null=True, verbose_name="numero nella catena"),
                        ),
                        ("key_id", models.CharField(blank=True, default="", max_length=16, verbose_name="chiave")),
                        ("prev_hash", models.CharField(max_length=64, verbose_name="hash precedente")),
                        ("hash", models.CharField(max_length=64, unique=True, verbose_name="hash")),
                        (
                            "patient",
                            models.ForeignKey(
                                blank=True,
                                db_constraint=False,
                                null=True,
                                on_delete=django.db.models.deletion.DO_NOTHING,
                                related_name="+",
                                to="archive.patient",
                                verbose_name="paziente",
                            ),
                        ),
                        (
                            "study",
                            models.ForeignKey(
                                blank=True,
                                db_constraint=False,
                                null=True,
                                on_delete=django.db.models.deletion.DO_NOTHING,
                                related_name="+",
                                to="archive.study",
                                verbose_name="studio",
                            ),
                        ),
                        (
                            "user",
                            models.ForeignKey(
                                blank=True,
                                db_constraint=False,
                                null=True,
                                on_delete=django.db.models.deletion.DO_NOTHING,
                                to=settings.AUTH_USER_MODEL,
                                verbose_name="utente",
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "evento di audit",
                        "verbose_name_plural": "eventi di audit",
                        "db_table": "archive_auditevent",
                        "ordering": ["-id"],
                    },
                ),
                migrations.CreateModel(
                    name="AuditEventPatient",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "event",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.DO_NOTHING,
                                related_name="patient_links",
                                to="kernel.auditevent",
                                verbose_name="evento",
                            ),
                        ),
                        (
                            "patient",
                            models.ForeignKey(
                                db_constraint=False,
                                db_index=False,
                                on_delete=django.db.models.deletion.DO_NOTHING,
                                related_name="+",
                                to="archive.patient",
                                verbose_name="paziente",
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "paziente in un risultato di ricerca",
                        "verbose_name_plural": "pazienti nei risultati di ricerca",
                        "db_table": "archive_auditeventpatient",
                    },
                ),
                migrations.AddIndex(
                    model_name="auditevent",
                    index=models.Index(fields=["patient", "at"], name="audit_patient_at"),
                ),
                migrations.AddConstraint(
                    model_name="auditevent",
                    constraint=models.UniqueConstraint(fields=("chain", "seq"), name="audit_chain_seq"),
                ),
                migrations.AddConstraint(
                    model_name="auditeventpatient",
                    constraint=models.UniqueConstraint(fields=("patient", "event"), name="audit_patient_event"),
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_move("archive", "kernel"), content_types_move("kernel", "archive")),
    ]
