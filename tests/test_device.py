"""Device access: kinds, sizes and clear errors for unusable paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from famfs.device import Device, DeviceError, probe


def test_image_file_is_a_device_of_its_size(tmp_path: Path) -> None:
    image = tmp_path / "img"
    with open(image, "wb") as file:
        file.truncate(64 << 20)
    info = probe(image)
    assert (info.kind, info.size) == ("file", 64 << 20)
    with Device(image, writable=True) as device:
        device.write(12 << 20, b"famfs")
        assert device.read(12 << 20, 5) == b"famfs"
    assert image.read_bytes()[12 << 20:(12 << 20) + 5] == b"famfs"


@pytest.mark.parametrize(("make", "complaint"), [
    (lambda p: None, "no such device or image file"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: os.mkfifo(p), "not a dax device, block device or regular file"),
    (lambda p: p.touch(), "empty device"),
])
def test_unusable_paths_get_a_clear_error(tmp_path: Path, make, complaint: str) -> None:
    path = tmp_path / "dev"
    make(path)
    with pytest.raises(DeviceError, match=complaint) as caught:
        Device(path).close()
    assert str(path) in str(caught.value)


def test_access_past_the_end_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "img"
    with open(image, "wb") as file:
        file.truncate(4 << 20)
    with Device(image, writable=True) as device:
        with pytest.raises(DeviceError, match="past the device end"):
            device.read((4 << 20) - 2, 4)
        with pytest.raises(DeviceError, match="past the device end"):
            device.write(4 << 20, b"x")
