"""segprompt.weights and `segprompt weights`: registry, verified download, offline errors.

Downloads go to a real HTTP server on 127.0.0.1 (ephemeral port) started by this module;
nothing here touches the internet.
"""

from __future__ import annotations

import collections
import hashlib
import http.server
import random
import socket
import sys
import threading
import uuid
from pathlib import Path

import pytest

from segprompt import weights as W
from segprompt.cli import main
from segprompt.errors import ConfigError, WeightsError

PAYLOAD = random.Random(1234).randbytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.server.hits[self.path] += 1  # type: ignore[attr-defined]
        if self.path == "/model.pth":
            self._headers(len(PAYLOAD))
            self.wfile.write(PAYLOAD)
        elif self.path == "/cut.pth":  # announces the full length, sends a third, hangs up
            self._headers(len(PAYLOAD))
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/cut-nolength.pth":  # no Content-Length: only the checksum can tell
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.close_connection = True
        else:
            self.send_error(404, "Not Found")

    def _headers(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.hits = collections.Counter()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def base_url(server) -> str:
    server.hits.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def ckpt_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SEGPROMPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "checkpoints"


@pytest.fixture
def make_entry():
    names: list[str] = []

    def make(url: str, sha256: str | None = PAYLOAD_SHA, **kwargs) -> W.WeightsEntry:
        name = f"test-{uuid.uuid4().hex[:8]}"
        kwargs.setdefault("filename", f"{name}.pth")
        entry = W.WeightsEntry(
            name=name, family="sam", source="url", url=url, sha256=sha256, size_bytes=len(PAYLOAD),
            architecture="vit_b", **kwargs,
        )
        W.register_weights(entry)
        names.append(name)
        return entry

    yield make
    for name in names:
        W.unregister_weights(name)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- download -----------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_is_idempotent(server, base_url, ckpt_dir, make_entry):
    entry = make_entry(f"{base_url}/model.pth")
    path = W.fetch(entry.name, progress=False, timeout=5)
    assert path == W.weights_path(entry.name) == ckpt_dir / entry.filename
    assert path.read_bytes() == PAYLOAD
    # atomic: only the final file and its checksum marker, no temp file
    assert _leftovers(ckpt_dir) == sorted([entry.filename, entry.filename + ".sha256.json"])
    assert server.hits["/model.pth"] == 1

    assert W.fetch(entry.name, progress=False) == path  # present and verified: no download
    assert server.hits["/model.pth"] == 1
    assert W.find_weights(entry.name) == path
    assert W.find_weights(entry.filename) == path  # a bare registered file name resolves too
    assert W.find_weights(str(path)) == path  # an existing path passes through
    assert W.is_present(entry.name)

    W.fetch(entry.name, force=True, progress=False, timeout=5)
    assert server.hits["/model.pth"] == 2
    assert _leftovers(ckpt_dir) == sorted([entry.filename, entry.filename + ".sha256.json"])


def test_checksum_mismatch_leaves_no_file(base_url, ckpt_dir, make_entry):
    wrong = hashlib.sha256(b"something else").hexdigest()
    entry = make_entry(f"{base_url}/model.pth", sha256=wrong)
    with pytest.raises(WeightsError) as info:
        W.fetch(entry.name, progress=False, timeout=5)
    msg = str(info.value)
    assert entry.filename in msg and wrong in msg and PAYLOAD_SHA in msg
    assert str(ckpt_dir / entry.filename) in msg  # where to put a good copy by hand
    assert _leftovers(ckpt_dir) == []


def test_refused_connection_names_file_and_destination(ckpt_dir, make_entry):
    url = f"http://127.0.0.1:{_closed_port()}/model.pth"
    entry = make_entry(url)
    with pytest.raises(WeightsError) as info:
        W.fetch(entry.name, progress=False, timeout=5)
    msg = str(info.value)
    assert msg.startswith(f"could not download {entry.filename} from {url} (")
    assert "refused" in msg.lower()
    assert str(ckpt_dir / entry.filename) in msg and "\n" not in msg
    assert _leftovers(ckpt_dir) == []


def test_http_error_is_a_weights_error(base_url, ckpt_dir, make_entry):
    entry = make_entry(f"{base_url}/nowhere.pth")
    with pytest.raises(WeightsError, match="HTTP 404"):
        W.fetch(entry.name, progress=False, timeout=5)
    assert _leftovers(ckpt_dir) == []


@pytest.mark.parametrize("route, sha", [("/cut.pth", None), ("/cut-nolength.pth", PAYLOAD_SHA)])
def test_cut_transfer_leaves_no_final_file(base_url, ckpt_dir, make_entry, route, sha):
    entry = make_entry(f"{base_url}{route}", sha256=sha)
    with pytest.raises(WeightsError) as info:
        W.fetch(entry.name, progress=False, timeout=5)
    assert entry.filename in str(info.value)
    assert _leftovers(ckpt_dir) == []
    with pytest.raises(WeightsError, match="is missing"):
        W.find_weights(entry.name)


def test_fetch_replaces_a_corrupt_file(server, base_url, ckpt_dir, make_entry):
    entry = make_entry(f"{base_url}/model.pth")
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / entry.filename).write_bytes(PAYLOAD[:1000])
    assert W.fetch(entry.name, progress=False, timeout=5).read_bytes() == PAYLOAD
    assert server.hits["/model.pth"] == 1


def test_interrupted_download_removes_temp_file(base_url, ckpt_dir, make_entry, monkeypatch):
    entry = make_entry(f"{base_url}/model.pth")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(W, "_check_space", boom)  # called mid-download, after the temp file exists
    with pytest.raises(KeyboardInterrupt):
        W.fetch(entry.name, progress=False, timeout=5)
    assert _leftovers(ckpt_dir) == []


# --- finding, offline -----------------------------------------------------------------------


def test_missing_official_checkpoint_says_what_to_do(ckpt_dir):
    with pytest.raises(WeightsError) as info:
        W.find_weights("sam_vit_b")
    msg = str(info.value)
    assert "sam_vit_b_01ec64.pth" in msg
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in msg
    assert str(ckpt_dir / "sam_vit_b_01ec64.pth") in msg
    assert "segprompt weights fetch sam_vit_b" in msg
    # the registered file name and aliases find the same entry
    with pytest.raises(WeightsError, match="segprompt weights fetch sam_vit_b"):
        W.find_weights("sam_vit_b_01ec64.pth")
    assert W.weights_path("sam-vit-b") == W.weights_path("vit_b") == ckpt_dir / "sam_vit_b_01ec64.pth"


def test_unknown_name_suggests(ckpt_dir):
    with pytest.raises(ConfigError, match="Did you mean"):
        W.find_weights("sam_vit_bb")
    with pytest.raises(ConfigError, match="unknown weights"):
        W.fetch("no-such-model")
    with pytest.raises(WeightsError, match="no such file"):
        W.find_weights("some/folder/model.pth")


def test_hand_placed_file_is_hashed_once(ckpt_dir, make_entry, monkeypatch):
    entry = make_entry("http://127.0.0.1:9/unused.pth")
    ckpt_dir.mkdir(parents=True)
    path = ckpt_dir / entry.filename
    path.write_bytes(PAYLOAD)
    calls = []
    real = W._hash_file
    monkeypatch.setattr(W, "_hash_file", lambda p, progress=False: calls.append(p) or real(p))
    assert W.find_weights(entry.name) == path
    assert W.find_weights(entry.name) == path
    assert len(calls) == 1  # the marker remembers the verified file
    assert W.sha256_file(path) == PAYLOAD_SHA and len(calls) == 1

    path.write_bytes(PAYLOAD[:-10])  # replaced by another file
    with pytest.raises(WeightsError) as info:
        W.find_weights(entry.name)
    assert "does not match" in str(info.value) and str(path) in str(info.value)
    assert W.find_weights(entry.name, verify_checksum=False) == path


def test_sha256_file_memo_and_verify(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(PAYLOAD)
    calls = []
    real = W._hash_file
    monkeypatch.setattr(W, "_hash_file", lambda p, progress=False: calls.append(p) or real(p))
    assert W.sha256_file(path) == PAYLOAD_SHA
    assert W.sha256_file(str(path)) == PAYLOAD_SHA
    assert len(calls) == 1
    path.write_bytes(b"new content")
    assert W.sha256_file(path) == hashlib.sha256(b"new content").hexdigest()
    assert len(calls) == 2
    assert W.verify(path, hashlib.sha256(b"new content").hexdigest().upper())
    assert not W.verify(path, PAYLOAD_SHA)
    with pytest.raises(WeightsError):
        W.sha256_file(tmp_path / "absent.bin")


def test_fingerprint_of_a_folder(tmp_path):
    folder = tmp_path / "snap"
    (folder / ".cache").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"abc")
    first = W.weights_fingerprint(folder)
    (folder / ".cache" / "junk").write_text("ignored")
    assert W.weights_fingerprint(folder) == first
    (folder / "model.safetensors").write_bytes(b"abcd")
    assert W.weights_fingerprint(folder) != first


# --- Hugging Face Hub entries -----------------------------------------------------------------


def test_hub_fetch_offline_error_names_repo_and_folder(ckpt_dir, monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("We have no connection\nto the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    dest = ckpt_dir / "clipseg-rd64-refined"
    with pytest.raises(WeightsError) as info:
        W.fetch("clipseg-rd64-refined")
    msg = str(info.value)
    assert "CIDAS/clipseg-rd64-refined" in msg and "\n" not in msg
    assert f"git clone https://huggingface.co/CIDAS/clipseg-rd64-refined {dest}" in msg
    with pytest.raises(WeightsError, match="git clone https://huggingface.co/CIDAS/clipseg-rd64"):
        W.find_weights("clipseg-rd64")
    assert _leftovers(ckpt_dir) == []

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(WeightsError, match="huggingface_hub"):
        W.fetch("biomedclip")


def test_hub_fetch_and_hand_clone(ckpt_dir, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, local_dir, **kwargs):
        calls.append(repo_id)
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / "open_clip_config.json").write_text("{}")
        (Path(local_dir) / ".cache").mkdir(exist_ok=True)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    dest = W.fetch("biomedclip")
    assert dest == ckpt_dir / "biomedclip" and (dest / "open_clip_config.json").is_file()
    assert _leftovers(ckpt_dir) == ["biomedclip"] and not (dest / ".cache").exists()
    assert W.fetch("biomedclip") == dest and calls == ["microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"]
    assert W.find_weights("biomedclip") == dest

    # a clone made without git-lfs holds pointer stubs: say so
    clone = ckpt_dir / "clipseg-rd64"
    clone.mkdir()
    (clone / "config.json").write_text("{}")
    (clone / "pytorch_model.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    with pytest.raises(WeightsError, match="git lfs pull"):
        W.find_weights("clipseg-rd64")


# --- entries ----------------------------------------------------------------------------------


def test_builtin_entries():
    for name, arch in [("sam_vit_b", "vit_b"), ("sam_vit_l", "vit_l"), ("sam_vit_h", "vit_h")]:
        entry = W.get_entry(name)
        assert entry.family == "sam" and entry.architecture == arch and len(entry.sha256) == 64
        assert entry.url.endswith("/" + entry.filename)
        assert entry.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
    openai = W.get_entry("openclip-vit-b-16-openai")
    assert openai.sha256 in openai.url and openai.model == "ViT-B-16" and openai.pretrained == "openai"
    assert W.get_entry("biomedclip").repo_id == "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert W.get_entry("clipseg-rd64-refined").sha256 is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"family": "yolo"},
        {"source": "ftp"},
        {"url": None},
        {"sha256": "abc"},
        {"filename": "../evil.pth"},
        {"source": "hf-hub", "url": None},
    ],
)
def test_entry_validation(kwargs):
    base = dict(name="x", family="sam", source="url", url="http://h/x.pth", filename="x.pth")
    with pytest.raises(ConfigError):
        W.WeightsEntry(**{**base, **kwargs})


def test_register_twice_and_replace(make_entry):
    entry = make_entry("http://127.0.0.1:9/a.pth")
    with pytest.raises(ConfigError, match="registered twice"):
        W.register_weights(entry)
    replacement = W.WeightsEntry(name=entry.name, family="sam", source="url", url="http://h/b.pth", filename="b.pth")
    W.register_weights(replacement, replace=True)
    assert W.get_entry(entry.name).filename == "b.pth"
    assert W.WeightsEntry(name="u", family="sam", source="url", url="http://h", filename="u.pth", sha256="AB" * 32).sha256 == "ab" * 32


# --- CLI --------------------------------------------------------------------------------------


def test_cli_list_path_fetch(base_url, ckpt_dir, make_entry, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("sam_vit_b", "sam_vit_l", "sam_vit_h", "clipseg-rd64-refined", "biomedclip"):
        assert name in out
    assert str(ckpt_dir) in out

    entry = make_entry(f"{base_url}/model.pth")
    assert main(["weights", "path", entry.name]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == str(ckpt_dir / entry.filename)
    assert f"segprompt weights fetch {entry.name}" in captured.err

    assert main(["weights", "fetch", entry.name, "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(ckpt_dir / entry.filename)
    assert main(["weights", "path", entry.name]) == 0
    assert capsys.readouterr().out.strip() == str(ckpt_dir / entry.filename)
    assert main(["weights", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(entry.name))
    assert " yes " in row


def test_cli_errors_are_one_line(ckpt_dir, make_entry, capsys):
    assert main(["weights", "path", "sam_vit_bb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown weights") and "Did you mean" in err and "\n" not in err

    entry = make_entry(f"http://127.0.0.1:{_closed_port()}/model.pth")
    assert main(["weights", "fetch", entry.name, "--no-progress", "--timeout", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: could not download {entry.filename}") and "\n" not in err
    assert str(ckpt_dir / entry.filename) in err
