"""Studies for the diagnostic viewer's tests (tests/interop/test_browser_viewer3d.py) and its
benchmark: generated CT series with known geometry, from pydicom's bundled files with fresh UIDs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive.ingest import instance_ingest
from archive.models import Facility, Study
from archive.sample_data import PatientInfo, bundled_dataset, fresh_copy


def ct_series(
    dest: Path,
    *,
    patient: PatientInfo,
    slices: int,
    size: int = 128,
    study_date: dt.date,
    description: str,
    z0: float = 0.0,
    spacing: float = 2.5,
    pixel_spacing: float | None = 0.7,
    imager_pixel_spacing: float | None = None,
    dots: tuple[tuple[int, int], ...] = (),
    accession_number: str = "",
    study_uid: str | None = None,
    frame_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "Assiale",
    coronal: bool = False,
) -> list[Path]:
    """One axial CT series of ``slices`` images ``size``×``size`` along z from ``z0`` every ``spacing`` mm
    (along y when ``coronal``), one frame of reference (new, or ``frame_uid``) in a new study (or
    ``study_uid``'s); each slice's pixels differ (a ring whose radius grows with the slice) and ``dots``
    (row, column) are bright 3×3 squares on a black background when given."""
    dest.mkdir(parents=True, exist_ok=True)
    template = bundled_dataset("CT_small.dcm")
    study_uid, series_uid = study_uid or generate_uid(), generate_uid()
    frame_uid = frame_uid or generate_uid()
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    paths = []
    for i in range(slices):
        ds = fresh_copy(
            template,
            patient=patient,
            study_uid=study_uid,
            series_uid=series_uid,
            instance_number=i + 1,
            series_number=series_number,
            study_date=study_date,
            study_description=description,
            series_description=series_description,
            accession_number=accession_number,
            modality="CT",
        )
        if dots:
            pixels = np.full((size, size), -1000, dtype=np.int16)
            for row, column in dots:
                pixels[row - 1 : row + 2, column - 1 : column + 2] = 1000
        else:
            ring = np.abs(radius - (5 + (i % 50) * size / 110)) < 3
            pixels = np.where(radius < size * 0.45, 40, -1000).astype(np.int16)
            pixels[ring] = 700
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.PixelData = pixels.tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.FrameOfReferenceUID = frame_uid
        if coronal:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
            ds.ImagePositionPatient = [-size / 2, z0 + i * spacing, size / 2]
        else:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [-size / 2, -size / 2, z0 + i * spacing]
        ds.SliceLocation = z0 + i * spacing
        ds.SliceThickness = spacing
        ds.WindowCenter, ds.WindowWidth = 40, 400
        if pixel_spacing is None:
            del ds.PixelSpacing
        else:
            ds.PixelSpacing = [pixel_spacing, pixel_spacing]
        if imager_pixel_spacing is not None:
            ds.ImagerPixelSpacing = [imager_pixel_spacing, imager_pixel_spacing]
        path = dest / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def bundled_study(dest: Path, *, patient: PatientInfo, name: str, study_date: dt.date, description: str) -> list[Path]:
    """One instance of a bundled file (kept in its own transfer syntax) as a study of ``patient``."""
    dest.mkdir(parents=True, exist_ok=True)
    ds = fresh_copy(
        name,
        patient=patient,
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        study_date=study_date,
        study_description=description,
    )
    path = dest / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path]


def ingest(paths: list[Path], facility: Facility) -> Study:
    for path in paths:
        instance_ingest(path=path, facility=facility, owned=False, calling_ae="CT01")
    from pydicom import dcmread

    uid = dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    return Study.objects.get(study_instance_uid=uid)
