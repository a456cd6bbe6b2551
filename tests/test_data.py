"""microgpt.data: cache location, verified atomic downloads, document loading and the train/val split."""

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from microgpt import UserError
from microgpt.data import cache_dir, default_dataset, download, load_documents, split_documents

REPO = Path(__file__).resolve().parent.parent
from conftest import NAMES
BODY = b"emma\nolivia\nava\n"
BODY_SHA = hashlib.sha256(BODY).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves /good, /truncated (announces more bytes than it sends), /slow; everything else is a 404."""

    release = threading.Event()  # /slow waits on this so a test can time out without sleeping

    def do_GET(self):
        if self.path in ("/good", "/truncated", "/slow"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY) + (100 if self.path == "/truncated" else 0)))
            self.end_headers()
            if self.path == "/slow":
                self.wfile.flush()
                self.release.wait(5)
            self.wfile.write(BODY)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty private cache directory, with no $MICROGPT_DATA to short-circuit the lookup."""
    monkeypatch.setenv("MICROGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MICROGPT_DATA", raising=False)
    return tmp_path / "cache"


def refused_url():
    """A URL on a port nobody listens on: connection refused, like being offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/names.txt"


# ----------------------------------------------------------------------------- cache_dir

def test_cache_dir_override_and_platform_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MICROGPT_CACHE", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert cache_dir() == Path("/xdg/microgpt-lab")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / ".cache" / "microgpt-lab"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cache_dir() == tmp_path / "Library" / "Caches" / "microgpt-lab"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", "/local")
    assert cache_dir() == Path("/local/microgpt-lab")
    monkeypatch.setenv("MICROGPT_CACHE", "/mine")
    assert cache_dir() == Path("/mine")


# ----------------------------------------------------------------------------- download

def test_download_good_file(server, tmp_path):
    dest = tmp_path / "cache" / "names.txt"
    download(f"{server}/good", dest, BODY_SHA, timeout=5)
    assert dest.read_bytes() == BODY
    assert os.listdir(dest.parent) == ["names.txt"]


@pytest.mark.parametrize("path, sha, message", [
    ("/good", "0" * 64, "SHA-256"),
    ("/truncated", BODY_SHA, "cut off"),
    ("/missing", BODY_SHA, "HTTP 404"),
])
def test_download_failures_leave_nothing_behind(server, tmp_path, path, sha, message):
    dest = tmp_path / "names.txt"
    with pytest.raises(UserError, match=message) as e:
        download(server + path, dest, sha, timeout=5)
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_download_timeout(server, tmp_path):
    with pytest.raises(UserError, match="timed out"):
        download(f"{server}/slow", tmp_path / "names.txt", BODY_SHA, timeout=0.2)
    assert os.listdir(tmp_path) == []


def test_download_offline_says_where_to_put_the_file(tmp_path):
    dest = tmp_path / "names.txt"
    with pytest.raises(UserError) as e:
        download(refused_url(), dest, BODY_SHA, timeout=5)
    assert "MICROGPT_DATA=" in str(e.value) and str(dest) in str(e.value)
    assert os.listdir(tmp_path) == []


def test_download_onto_a_directory_is_a_user_error(server, tmp_path):
    dest = tmp_path / "names.txt"
    dest.mkdir()
    with pytest.raises(UserError, match="cannot save the download"):
        download(f"{server}/good", dest, BODY_SHA, timeout=5)
    assert os.listdir(tmp_path) == ["names.txt"] and os.listdir(dest) == []


# ----------------------------------------------------------------------------- default_dataset

def test_default_dataset_prefers_microgpt_data(cache, tmp_path, monkeypatch):
    mine = tmp_path / "mine.txt"
    mine.write_text("x\n")
    monkeypatch.setenv("MICROGPT_DATA", str(mine))
    assert default_dataset(url=refused_url()) == mine
    assert not cache.exists()


def test_default_dataset_missing_microgpt_data(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MICROGPT_DATA", str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="MICROGPT_DATA"):
        default_dataset(url=refused_url())


def test_default_dataset_uses_verified_cache_without_network(cache):
    cache.mkdir()
    (cache / "names.txt").write_bytes(BODY)
    assert default_dataset(url=refused_url(), sha256=BODY_SHA) == cache / "names.txt"


def test_default_dataset_downloads_into_cache(cache, server, capsys):
    path = default_dataset(url=f"{server}/good", sha256=BODY_SHA, timeout=5)
    assert path == cache / "names.txt" and path.read_bytes() == BODY
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"downloading names.txt from {server}/good to {path}" in err


def test_default_dataset_replaces_bad_cached_file(cache, server):
    cache.mkdir()
    (cache / "names.txt").write_bytes(b"corrupted\n")
    path = default_dataset(url=f"{server}/good", sha256=BODY_SHA, timeout=5)
    assert path.read_bytes() == BODY
    assert os.listdir(cache) == ["names.txt"]


def test_default_dataset_offline_with_empty_cache(cache):
    with pytest.raises(UserError, match="MICROGPT_DATA="):
        default_dataset(url=refused_url(), sha256=BODY_SHA)
    assert not cache.exists() or os.listdir(cache) == []


# ----------------------------------------------------------------------------- load_documents

def test_load_documents_strips_and_drops_blank_lines(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("\ufeff  emma \r\n\n\t\nolivia\r\nanna maria\n".encode())
    assert load_documents([str(f)]) == ["emma", "olivia", "anna maria"]


def test_load_documents_directory_and_order(tmp_path):
    (tmp_path / "b.txt").write_text("bob\n")
    (tmp_path / "a.txt").write_text("zed\namy\n")
    (tmp_path / "ignored.csv").write_text("nope\n")
    extra = tmp_path / "extra.dat"
    extra.write_text("last\n")
    assert load_documents([str(tmp_path), str(extra)]) == ["zed", "amy", "bob", "last"]


@pytest.mark.parametrize("content, message", [
    (b"", "no documents"),
    (b"\n  \n\t\n", "no documents"),
    (b"emma\n\x00\x01\x02", "binary.*offset 5"),
    (b"emma\nzo\xe9\n", "not UTF-8.*offset 7"),
])
def test_load_documents_bad_files(tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_documents([str(f)])


def test_load_documents_missing_and_empty_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_documents([str(tmp_path / "nope.txt")])
    with pytest.raises(UserError, match=r"no \*\.txt"):
        load_documents([str(tmp_path)])
    with pytest.raises(UserError, match="no data files"):
        load_documents([])


def test_load_documents_unreadable(tmp_path, monkeypatch):
    f = tmp_path / "secret.txt"
    f.write_text("emma\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "read_bytes", refuse)  # chmod 0 would not stop root
    with pytest.raises(UserError, match="cannot read .*secret.txt: Permission denied"):
        load_documents([str(f)])


# ----------------------------------------------------------------------------- split_documents

def test_split_is_deterministic_and_sized():
    docs = [f"doc{i}" for i in range(1000)]
    train, val = split_documents(docs, 0.1, seed=42)
    assert (train, val) == split_documents(docs, 0.1, seed=42)
    assert len(train) == 900 and len(val) == 100
    assert sorted(train + val) == sorted(docs)
    assert train + val != docs  # it was shuffled
    other_train, other_val = split_documents(docs, 0.1, seed=43)
    assert other_val != val
    assert docs == [f"doc{i}" for i in range(1000)]  # the input is not shuffled in place


def test_split_edge_cases():
    assert split_documents(["a", "b", "c"], 0.0, 1)[1] == []
    assert len(split_documents(["a", "b"], 0.01, 1)[1]) == 1  # a positive fraction gets >= 1 val doc
    train, val = split_documents(["a"], 0.5, 1)
    assert train == ["a"] and val == []  # training always keeps a document
    train, val = split_documents(["a", "b"], 0.9, 1)
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(UserError, match="val-fraction"):
        split_documents(["a", "b"], 1.0, 1)
    with pytest.raises(UserError, match="no documents"):
        split_documents([], 0.1, 1)


# ----------------------------------------------------------------------------- the demo

def run_demo(*args, env=None):
    return subprocess.run([sys.executable, "-m", "microgpt.data", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_demo_runs(tmp_path):
    f = tmp_path / "few.txt"
    f.write_text("emma\nolivia\nava\nisabella\n")
    result = run_demo("--data", str(f))
    assert result.returncode == 0, result.stderr
    assert "4 documents" in result.stdout and "3 train, 1 val" in result.stdout
    assert "mean 5.25, max 8" in result.stdout


def test_demo_via_environment(tmp_path):
    """No --data: the demo finds the dataset through $MICROGPT_DATA (names.txt when we have it)."""
    path, expected = NAMES, "32033 documents"
    if not NAMES.is_file():
        path, expected = tmp_path / "letters.txt", "26 documents"
        path.write_text("\n".join("abcdefghijklmnopqrstuvwxyz"))
    result = run_demo(env={"MICROGPT_DATA": str(path)})
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout and "$MICROGPT_DATA" in result.stdout
    assert "abcdefghijklmnopqrstuvwxyz" in result.stdout


def test_demo_error_is_one_line(tmp_path):
    result = run_demo("--data", str(tmp_path / "nope.txt"))
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1
