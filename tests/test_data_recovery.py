"""Bad data never costs work: a cut or corrupt download is caught by its MD5 and fetched again, a
half-present folder is named file by file, a stale mean/std cache is recomputed. The downloads come
from a local HTTP server."""

import hashlib
import json
import pickle
import socket
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

import data
import train
import utils
from data import FOLDER, CIFAR10DataModule, download_cifar10, make_synthetic, write_cifar_folder
from utils import channel_stats

OFFLINE = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # the discard port: refused at once


class CountingHandler(SimpleHTTPRequestHandler):
    """Counts requests (torchvision opens the URL once to follow redirects, then again to
    download)."""

    def do_GET(self):
        self.server.requests += 1
        try:
            super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the redirect probe hanging up

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A CIFAR-10 mirror on 127.0.0.1: a small archive in the official layout, its MD5, a request
    counter."""
    root = tmp_path_factory.mktemp("mirror")
    write_cifar_folder(root / "src", *make_synthetic(60, seed=1), *make_synthetic(20, seed=2))
    archive = root / "site" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "src" / FOLDER, arcname=FOLDER)
    handler = partial(CountingHandler, directory=str(archive.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    yield SimpleNamespace(
        server=server,
        archive=archive,
        md5=md5,
        url=f"http://127.0.0.1:{server.server_port}/{archive.name}",
    )
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def download_from(mirror, data_dir):
    return lambda: download_cifar10(data_dir, url=mirror.url, md5=mirror.md5)


def requests_during(mirror, call):
    before = mirror.server.requests
    call()
    return mirror.server.requests - before


def test_cut_download_fails_its_checksum_and_is_fetched_again(mirror, tmp_path):
    complete = mirror.archive.read_bytes()
    # a download cut half way
    (tmp_path / mirror.archive.name).write_bytes(complete[: len(complete) // 2])
    assert requests_during(mirror, download_from(mirror, tmp_path)) > 0
    assert (tmp_path / mirror.archive.name).read_bytes() == complete
    assert len(data.load_cifar10(tmp_path)["train_labels"]) == 60


def test_half_unpacked_folder_is_restored_from_the_verified_archive(mirror, tmp_path):
    download_cifar10(tmp_path, url=mirror.url, md5=mirror.md5)
    (tmp_path / FOLDER / "data_batch_5").unlink()
    (tmp_path / FOLDER / "test_batch").unlink()
    assert requests_during(mirror, download_from(mirror, tmp_path)) == 0
    assert len(data.load_cifar10(tmp_path)["test_labels"]) == 20


def test_corrupt_download_is_deleted_and_reported(mirror, tmp_path):
    message = r"is corrupt \(its MD5 checksum is not 0{32}\).*--data-dir.*--synthetic"
    with pytest.raises(FileNotFoundError, match=message):
        download_cifar10(tmp_path, url=mirror.url, md5="0" * 32)
    # not kept to be trusted (or to fill the disk) next time
    assert not (tmp_path / mirror.archive.name).exists()


def test_half_present_folder_offline_names_the_missing_files(
    cifar_dir, tmp_path, capsys, monkeypatch
):
    folder = tmp_path / FOLDER
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_5"):
        (folder / name).write_bytes((cifar_dir / FOLDER / name).read_bytes())
    monkeypatch.setattr(data, "CIFAR_URL", OFFLINE)
    assert train_offline(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"error: {folder} lacks data_batch_4, test_batch and could not be downloaded" in err
    assert "--data-dir" in err and "--synthetic" in err


def train_offline(data_dir):
    """train.py's exit status on `data_dir`."""
    return train.main(
        ["--data-dir", str(data_dir), "--out", str(data_dir / "run"), "--num-workers", "0"]
    )


def test_offline_without_data_is_one_message_naming_both_ways_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "CIFAR_URL", OFFLINE)
    assert train.main(["--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: CIFAR-10 is not in")
    assert "--data-dir" in err and "--synthetic" in err and "Traceback" not in err


def test_labels_outside_the_classes_are_named(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}))
    with pytest.raises(ValueError, match=f"{path} has labels outside 0..9"):
        data.read_batch(path)


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text.replace('"mean"', '"average"'),  # a cache from another version
        lambda text: text[: len(text) // 2],  # truncated
    ],
)
def test_stale_or_broken_stats_cache_is_recomputed(tmp_path, damage):
    def stats_of(images, labels):
        write_cifar_folder(tmp_path, images, labels, *make_synthetic(20, seed=2))
        datamodule = CIFAR10DataModule(tmp_path, num_workers=0)
        datamodule.setup("fit")
        return datamodule.mean

    first = make_synthetic(60, seed=1)
    assert stats_of(*first) == pytest.approx(channel_stats(first[0])[0])
    other = make_synthetic(60, seed=7)  # the folder's data change under the cache
    assert stats_of(*other) == pytest.approx(channel_stats(other[0])[0])
    cache = tmp_path / FOLDER / utils.STATS_FILE
    assert json.loads(cache.read_text())["mean"] == pytest.approx(channel_stats(other[0])[0])
    cache.write_text(damage(cache.read_text()))
    assert stats_of(*other) == pytest.approx(channel_stats(other[0])[0])
    assert json.loads(cache.read_text())["mean"] == pytest.approx(channel_stats(other[0])[0])


class StallingServer:
    """Accepts connections on 127.0.0.1 and then stalls: either never answers, or sends the headers
    of a large file and a little of it, then nothing. Counts the connections."""

    def __init__(self, send_headers):
        self.send_headers, self.connections, self.held = send_headers, 0, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/cifar-10-python.tar.gz"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.connections += 1
            self.held.append(connection)  # kept open by the server: a stall, not a cut
            if self.send_headers:
                connection.recv(65536)
                headers = b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n"
                connection.sendall(headers + b"x" * 1000)

    def close(self):
        self.listener.close()
        for connection in self.held:
            connection.close()


@pytest.mark.parametrize("send_headers", [False, True], ids=["no-answer", "stops-mid-file"])
def test_stalled_download_gives_up_after_its_retries_with_one_message(
    send_headers, tmp_path, capsys, monkeypatch
):
    server = StallingServer(send_headers)
    monkeypatch.setattr(data, "CIFAR_URL", server.url)
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT", 0.5)  # seconds; 30 in real use
    monkeypatch.setattr(data, "DOWNLOAD_RETRY_WAIT", 0)
    try:
        assert train_offline(tmp_path) == 2
    finally:
        server.close()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"download from {server.url} stalled or was cut 3 times" in errors[0]
    assert "TimeoutError" in errors[0] and "--data-dir" in errors[0] and "--synthetic" in errors[0]
    # torchvision probes the URL for redirects (one connection), then downloads (another): the
    # probe returns at the headers, so a server that sends them is reached twice per attempt
    assert server.connections == data.DOWNLOAD_ATTEMPTS * (2 if send_headers else 1)
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()  # no partial archive left behind
    assert socket.getdefaulttimeout() is None  # the timeout was for the download only


def test_processes_starting_together_download_once(mirror, tmp_path):
    """DDP processes started together (torchrun, nodes sharing the folder) each call
    download_cifar10: the first downloads while the others wait for it, then find the data there."""
    results = []

    def download():
        results.append(download_cifar10(tmp_path, url=mirror.url, md5=mirror.md5))

    threads = [threading.Thread(target=download) for _ in range(3)]

    def start_and_join():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert requests_during(mirror, start_and_join) == 2
    assert results == [tmp_path / FOLDER] * 3
    assert len(data.load_cifar10(tmp_path)["train_labels"]) == 60
