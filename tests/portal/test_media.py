"""A study packaged for download: the original DICOM files as DICOM media
with a DICOMDIR, and the images as JPEG, one folder per series."""

from __future__ import annotations

import hashlib
import io
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.fileset import FileSet

from archive.models import Instance, Series, Study
from archive.rendering import previews
from archive.sample_data import SR, US_MULTIFRAME, PatientInfo, write_study
from archive.storage import retrieve
from archive.storage import tiers as storage
from portal import media
from portal.media import MediaError, dicom_media_zip_write, jpeg_zip_write
from tests.dicomweb_helpers import ingest_files


def _study() -> Study:
    return Study.objects.get()


def _zip64_in_local_header(path: Path, info: zipfile.ZipInfo) -> bool:
    with path.open("rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
        assert header[:4] == b"PK\x03\x04"
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        fh.seek(name_len, 1)
        extra = fh.read(extra_len)
    while len(extra) >= 4:
        tag, size = struct.unpack("<HH", extra[:4])
        if tag == 0x0001:
            return True
        extra = extra[4 + size :]
    return False


def _no_leftovers(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def test_dicom_zip_is_dicom_media_with_the_original_bytes(region, ct_study: list[Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study, region.facility)
    study = _study()
    out = tmp_path / "out" / "study.zip"
    seen: list[tuple[int, int]] = []

    info = dicom_media_zip_write(study=study, path=out, progress=lambda done, total: seen.append((done, total)))

    assert info.path == out and info.instance_count == 6
    assert info.size == out.stat().st_size
    assert info.size == out.stat().st_size
    assert [p.name for p in _no_leftovers(out.parent)] == ["study.zip"]
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))

    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names[0] == "README.TXT" and names[-1] == "DICOMDIR"
        assert sorted(names[1:-1]) == [f"DICOM/S000{s}/I000{i}" for s in (1, 2) for i in (1, 2, 3)]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert all(_zip64_in_local_header(out, i) for i in infos)
        unzipped = tmp_path / "unzipped"
        zf.extractall(unzipped)

    fs = FileSet(unzipped / "DICOMDIR")
    stored = {i.sop_instance_uid: i for i in Instance.objects.all()}
    assert sorted(i.SOPInstanceUID for i in fs) == sorted(stored)
    for item in fs:
        data = Path(item.path).read_bytes()
        instance = stored[item.SOPInstanceUID]
        assert hashlib.sha256(data).hexdigest() == instance.sha256
        with retrieve.instance_open(instance) as fh:
            assert data == fh.read()
        assert all(len(c) <= 8 and c == c.upper() for c in item.ReferencedFileID)
    # The records say what a viewer lists: patient, study, series, images.
    assert {i.PatientID for i in fs} == {"MRN0001"}
    assert {i.StudyInstanceUID for i in fs} == {study.study_instance_uid}
    assert len({i.SeriesInstanceUID for i in fs}) == 2

    dump = subprocess.run(["dcmdump", str(unzipped / "DICOMDIR")], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert "DICOM\\S0001\\I0001" in dump.stdout
    readme = (unzipped / "README.TXT").read_text(encoding="utf-8")
    assert "DICOMDIR" in readme and "byte per byte" in readme and "byte for byte" in readme
    assert "Rossi Mario" in readme


def test_the_dicomdir_offsets_written_in_place_are_those_of_encoding_it_again(  # type: ignore[no-untyped-def]
    region, tmp_path: Path, patient: PatientInfo, monkeypatch
) -> None:
    """media.dicomdir_encode writes the records' offsets into its one encoding; the reference
    here is what it did before: set them on the records and let pydicom encode the file again."""
    import pydicom.uid
    from pydicom import dcmwrite

    uid = pydicom.uid.generate_uid()
    files = write_study(tmp_path / "a", patient=patient, series=3, instances_per_series=4, study_uid=uid)
    files += write_study(tmp_path / "sr", patient=patient, source=SR, instances_per_series=1, study_uid=uid)
    ingest_files(files, region.facility)
    monkeypatch.setattr(pydicom.uid, "generate_uid", lambda *a, **k: pydicom.uid.UID("1.2.826.0.1.3680043.8.498.1"))
    groups, tree, _entries = media._layout_entries(Study.objects.get(study_instance_uid=uid))
    ours = media.dicomdir_encode(media._layout_records(groups, tree))

    roots = media._layout_records(groups, tree)
    flat = media._flatten(roots)
    first = dcmread(io.BytesIO(media.dicomdir_encode(roots)))  # only for its layout: the items' positions
    offsets = {id(r): item.seq_item_tell for r, item in zip(flat, first.DirectoryRecordSequence, strict=True)}

    def link(siblings: list) -> None:  # type: ignore[type-arg]
        for n, record in enumerate(siblings):
            if n + 1 < len(siblings):
                record.dataset.OffsetOfTheNextDirectoryRecord = offsets[id(siblings[n + 1])]
            if record.children:
                record.dataset.OffsetOfReferencedLowerLevelDirectoryEntity = offsets[id(record.children[0])]
                link(record.children)

    link(roots)
    first.DirectoryRecordSequence = [r.dataset for r in flat]
    first.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = offsets[id(roots[0])]
    first.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = offsets[id(roots[-1])]
    again = io.BytesIO()
    dcmwrite(again, first, enforce_file_format=True)
    assert ours == again.getvalue()
    assert len(flat) == 1 + 1 + 4 + 13  # patient, study, four series, twelve images and a report


@pytest.mark.parametrize(
    ("number", "file_id", "instance_uid"),
    [
        (12, ("DICOM", "S0001", "I0001"), "1.2.3.4"),  # even lengths
        (7, ("DICOM", "S0002", "I0345"), "1.2.3.45"),  # an odd ID and number: padded
        (-3, ("DICOM", "S0001", "I12345"), "1.2.826.0.1.3680043.8.498.123456789012345678901234567890123456"),
    ],
)
def test_an_image_record_encoded_by_hand_is_what_pydicom_encodes(
    number: int, file_id: tuple, instance_uid: str
) -> None:  # type: ignore[type-arg]
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    leaf = media._ImageLeaf(
        instance_number=number,
        file_id=file_id,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=instance_uid,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, leaf.dataset())
    assert leaf.encoded() == fp.getvalue()
    # A value pydicom must encode (not ASCII): the hand encoder declines, the record still encodes.
    odd = media._ImageLeaf(number, file_id, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.\u00e8", "1.2.840.10008.1.2.1")
    assert odd.encoded() is None
    root = media._Record(leaf.dataset())
    root.children.append(media._Record(image=odd))
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        read = dcmread(io.BytesIO(media.dicomdir_encode([root])))
        assert read.DirectoryRecordSequence[1].ReferencedSOPInstanceUIDInFile == "1.2.3.\u00e8"
    assert read.DirectoryRecordSequence[1].InstanceNumber == number


def test_dicom_zip_failing_half_way_leaves_nothing(region, ct_study: list[Path], tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study, region.facility)
    last = Instance.objects.order_by("series__series_number", "instance_number").last()
    assert last is not None
    real_open = retrieve.instance_open
    calls: dict[str, int] = {}

    def flaky_open(instance: Instance):  # type: ignore[no-untyped-def]
        calls[instance.sop_instance_uid] = calls.get(instance.sop_instance_uid, 0) + 1
        # The last instance is opened once, to be copied (the DICOMDIR's reads come after the copy).
        if instance.sop_instance_uid == last.sop_instance_uid:
            raise retrieve.NotAvailable(instance.sop_instance_uid, "disk gone")
        return real_open(instance)

    monkeypatch.setattr(retrieve, "instance_open", flaky_open)
    out = tmp_path / "out" / "study.zip"
    with pytest.raises(MediaError, match="disk gone"):
        dicom_media_zip_write(study=_study(), path=out)
    assert _no_leftovers(out.parent) == []
    # Every copy up to the last instance; the DICOMDIR (a header per series) is made after the
    # copy, so a copy that fails spares its reads.
    assert sum(calls.values()) == 6


def test_dicom_zip_refuses_a_copy_that_does_not_hash_as_recorded(region, ct_study: list[Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study, region.facility)
    instance = Instance.objects.order_by("pk").last()
    assert instance is not None
    copy = instance.copies.get()
    stored = storage.absolute_path(copy.tier, copy.path)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the pixel data
    stored.write_bytes(bytes(data))
    out = tmp_path / "study.zip"
    with pytest.raises(MediaError, match="SHA-256"):
        dicom_media_zip_write(study=_study(), path=out)
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".study.zip")] == []


def _jpegs(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist() if n.endswith(".jpg")}


def _check_jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "JPEG"
    return image


def test_jpeg_zip_has_one_image_per_instance_in_a_folder_per_series(
    region, ct_study: list[Path], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study, region.facility)
    Series.objects.filter(series_number=1).update(series_description="Torace")
    out = tmp_path / "jpeg.zip"
    seen: list[tuple[int, int]] = []
    info = jpeg_zip_write(study=_study(), path=out, progress=lambda d, t: seen.append((d, t)))
    jpegs = _jpegs(out)
    assert sorted(jpegs) == [
        f"{folder}/immagine-00{i}.jpg" for folder in ("Serie 01 - TC Torace", "Serie 02 - TC") for i in (1, 2, 3)
    ]
    assert info.instance_count == 6
    assert seen[-1] == (6, 6)
    for data in jpegs.values():
        assert _check_jpeg(data).size == (128, 128)  # full size
    with zipfile.ZipFile(out) as zf:
        readme = zf.read("README.TXT").decode()
        assert all(_zip64_in_local_header(out, i) for i in zf.infolist())
    assert "Rossi Mario" in readme and "could not be converted" not in readme


def test_jpeg_zip_uses_the_stored_full_size_preview(region, ct_study: list[Path], tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ingest_files(ct_study, region.facility)
    for series in Series.objects.all():
        previews.series_renditions_make(series_pk=series.pk)

    def no_rendering(**kwargs: object) -> bytes:
        raise AssertionError("rendered although a stored preview fits")

    monkeypatch.setattr(media, "render_with", no_rendering)
    out = tmp_path / "jpeg.zip"
    jpeg_zip_write(study=_study(), path=out)
    jpegs = _jpegs(out)
    assert len(jpegs) == 6
    first = Instance.objects.order_by("series__series_number", "instance_number").first()
    assert first is not None
    stored = previews.rendition_get(instance=first, frame=1, kind="preview", params=media.JPEG_PARAMS)
    assert stored is not None and jpegs["Serie 01 - TC/immagine-001.jpg"] == stored


def test_jpeg_zip_has_one_image_per_frame_of_a_clip(region, tmp_path: Path, patient: PatientInfo) -> None:  # type: ignore[no-untyped-def]
    paths = write_study(tmp_path / "us", patient=patient, source=US_MULTIFRAME, instances_per_series=1)
    ingest_files(paths, region.facility)
    frames = dcmread(paths[0], stop_before_pixels=True).NumberOfFrames
    assert frames > 1
    out = tmp_path / "jpeg.zip"
    info = jpeg_zip_write(study=_study(), path=out)
    jpegs = _jpegs(out)
    assert sorted(jpegs) == [f"Serie 01 - Ecografia/immagine-001-fotogramma-{f:03d}.jpg" for f in range(1, frames + 1)]
    assert info.instance_count == frames
    for data in jpegs.values():
        assert _check_jpeg(data).mode == "RGB"


def test_jpeg_zip_lists_what_cannot_be_rendered_in_the_readme(  # type: ignore[no-untyped-def]
    region, ct_study: list[Path], tmp_path: Path, patient: PatientInfo
) -> None:
    study_uid = str(dcmread(ct_study[0], stop_before_pixels=True).StudyInstanceUID)
    sr = write_study(tmp_path / "sr", patient=patient, source=SR, instances_per_series=1, study_uid=study_uid)
    ingest_files([*ct_study, *sr], region.facility)
    out = tmp_path / "jpeg.zip"
    info = jpeg_zip_write(study=_study(), path=out)
    assert info.instance_count == 6
    with zipfile.ZipFile(out) as zf:
        readme = zf.read("README.TXT").decode()
    assert "could not be converted" in readme
    assert "immagine-001.jpg: the object has no pixel data" in readme


def test_folder_names_are_safe_for_every_file_system() -> None:
    series = Series(modality="MR", series_number=3, series_description="Encéfalo T2/FLAIR: <assiale>")
    assert media.series_folder_name(number=3, series=series) == "Serie 03 - RM Encefalo T2 FLAIR assiale"
    assert media.series_folder_name(number=3, series=series, width=4) == "Serie 0003 - RM Encefalo T2 FLAIR assiale"


@pytest.mark.parametrize("whole_file", [media.WHOLE_FILE, 1], ids=["read-whole-hashed-in-threads", "chunk-by-chunk"])
def test_dicom_zip_members_check_out_by_either_copy(  # type: ignore[no-untyped-def]
    region, ct_study: list[Path], tmp_path: Path, monkeypatch, whole_file: int
) -> None:
    # Small instances are read whole and hashed in parallel, larger ones copied a chunk at a time:
    # either way the members are the stored bytes, in order, with CRC-32s that check out.
    monkeypatch.setattr(media, "WHOLE_FILE", whole_file)
    monkeypatch.setattr(media, "CHUNK", 4096)  # several chunks per 39 KB file
    ingest_files(ct_study, region.facility)
    out = tmp_path / "study.zip"
    dicom_media_zip_write(study=_study(), path=out)
    ordered = list(
        Instance.objects.order_by("series__series_number", "instance_number").values_list("sha256", flat=True)
    )
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None  # every member's CRC-32 recomputed from its bytes
        members = [i.filename for i in zf.infolist() if i.filename.startswith("DICOM/")]
        assert [hashlib.sha256(zf.read(m)).hexdigest() for m in members] == ordered


def test_dicom_zip_is_made_whole_or_not_at_all_when_a_copy_is_damaged_mid_study(  # type: ignore[no-untyped-def]
    region, ct_study: list[Path], tmp_path: Path
) -> None:
    ingest_files(ct_study, region.facility)
    second = Instance.objects.order_by("series__series_number", "instance_number")[1]
    copy = second.copies.get()
    stored = storage.absolute_path(copy.tier, copy.path)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(MediaError, match=f"{second.sop_instance_uid}: the stored copy does not match"):
        dicom_media_zip_write(study=_study(), path=tmp_path / "out" / "study.zip")
    assert _no_leftovers(tmp_path / "out") == []
