from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class BookingConfig(AppConfig):
    name = "booking"
    verbose_name = _("Prenotazioni CUP")

    def ready(self) -> None:
        # The archive answers Modality Worklist queries and announces new
        # studies without importing this app (docs/ARCHITECTURE.md: dependencies point
        # down); the hooks are connected here.
        from archive.dicomnet.conformance import worklist_keys_register
        from archive.dicomnet.listener import worklist_source_register
        from archive.reporting.booked import booked_exam_source_register, facility_contacts_source_register
        from archive.signals import procedure_step_changed, report_signed, study_instances_received

        from .exams import booked_exams_for, facility_contacts_for
        from .tasks import procedure_step_booking_enqueue, report_signed_booking, study_match_enqueue
        from .worklist import worklist_find, worklist_keys

        worklist_source_register(worklist_find)
        worklist_keys_register(worklist_keys)
        booked_exam_source_register(booked_exams_for)
        facility_contacts_source_register(facility_contacts_for)
        study_instances_received.connect(study_match_enqueue, dispatch_uid="booking.match")
        report_signed.connect(report_signed_booking, dispatch_uid="booking.reported")
        procedure_step_changed.connect(procedure_step_booking_enqueue, dispatch_uid="booking.procedure_step")
