"""The real download path (urllib, progress bar, md5 check, atomic extraction) against a
local HTTP server on 127.0.0.1 serving an archive built here from the CIFAR-10 files."""

import hashlib
import http.server
import tarfile
import threading
from pathlib import Path

import pytest

from cifarlab.cli import main
from cifarlab.data import verify
from helpers import real_data_root, write_cifar10


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The folder the archive is built from: the real files when present."""
    return (real_data_root() or write_cifar10(tmp_path_factory.mktemp("synthetic"))) / "cifar-10-batches-py"


@pytest.fixture(scope="module")
def archive(tmp_path_factory, source) -> Path:
    """cifar-10-python.tar.gz laid out as the official one."""
    workdir = tmp_path_factory.mktemp("archive")
    path = workdir / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.add(source, arcname="cifar-10-batches-py")
    (workdir / "truncated.tar.gz").write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    return path


@pytest.fixture(scope="module")
def server(archive):
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(archive.parent))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_download_extracts_verified_files(server, archive, source, tmp_path, capsys):
    target = tmp_path / "data"
    assert main(["data", "download", "--data-dir", str(target), "--url", f"{server}/{archive.name}",
                 "--md5", md5(archive)]) == 0  # fmt: skip
    folder = target / "cifar-10-batches-py"
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"]  # no temp leftovers
    assert {p.name: md5(p) for p in folder.iterdir()} == {p.name: md5(p) for p in source.iterdir()}
    if real_data_root():  # byte-identical to the official release
        assert [c.status for c in verify("cifar10", target)[1]] == ["ok"] * 7
    assert "B/s" in capsys.readouterr().err  # the progress bar ran


@pytest.mark.parametrize("name, md5_of", [("cifar-10-python.tar.gz", "wrong"), ("truncated.tar.gz", "archive")])
def test_bad_archive_writes_nothing(server, archive, tmp_path, capsys, name, md5_of):
    target = tmp_path / "data"
    expected = "0" * 32 if md5_of == "wrong" else md5(archive)
    assert main(["data", "download", "--data-dir", str(target), "--url", f"{server}/{name}", "--md5", expected]) == 2
    assert "md5" in capsys.readouterr().err
    assert not target.exists()


def test_unreachable_url_is_a_clear_error(server, tmp_path, capsys):
    target = tmp_path / "data"
    target.mkdir()
    assert main(["data", "download", "--data-dir", str(target), "--url", f"{server}/missing.tar.gz"]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "404" in err
    assert list(target.iterdir()) == []
