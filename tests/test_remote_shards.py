"""Shards from anywhere: a shard folder served over loopback HTTP (issue 33, part 3)."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading

import numpy as np
import pytest
import torch

from ffsplat.data import remote
from ffsplat.data.sampling import ViewSamplerConfig
from ffsplat.data.shards import ClipExamples, EvalIndexDataset, manifest_shards, read_manifest, verify_shards

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset reads http:// through curl")

SAMPLER = ViewSamplerConfig(num_context=2, num_target=1, min_gap=2, max_gap=4)


class Handler(http.server.SimpleHTTPRequestHandler):
    drop: set[str] = set()
    """Paths (relative to the folder) whose transfer stops half-way: the connection is cut."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        if name not in self.drop:
            return super().do_GET()
        data = (self.directory and open(f"{self.directory}/{name}", "rb").read()) or b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def serve():
    servers = []

    def start(folder, drop=()):
        handler = type("H", (Handler,), {"drop": set(drop)})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def examples(urls):
    return [(ex.scenes[0], ex.context.frame_ids, ex.context.images, ex.target.teacher) for ex in ClipExamples(urls, SAMPLER, shuffle_buffer=0, seed=2)]  # fmt: skip


def test_a_shard_folder_over_http_reads_like_the_local_folder(tiny_shards, serve):
    url = serve(tiny_shards)
    assert read_manifest(url) == read_manifest(tiny_shards)
    urls = manifest_shards(url, "train")
    assert urls and all(u.startswith(url + "/") for u in urls)
    local, over_http = examples(manifest_shards(tiny_shards, "train")), examples(urls)
    assert len(local) == len(over_http) > 0
    for a, b in zip(local, over_http):
        assert a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
        assert all(torch.equal(a[3][k], b[3][k]) for k in a[3])
    assert verify_shards(url) == verify_shards(tiny_shards)
    # evaluation reads the indexed frames from the same URL
    frames = sorted({int(i) for _, ids, _, _ in local for i in ids.flatten()})
    scene = local[0][0]
    index = {scene: [{"context": frames[:2], "target": frames[2:3]}]}
    split = next(n for n, s in read_manifest(url)["splits"].items() if any(x["scene"] == scene for x in s["shards"]))
    (ex,) = list(EvalIndexDataset(url, split, index))
    assert ex.context.frame_ids.flatten().tolist() == frames[:2]


def test_a_connection_dropped_mid_shard_is_skipped_and_named(tiny_shards, serve):
    shards = read_manifest(tiny_shards)["splits"]["train"]["shards"]
    assert len(shards) >= 2
    url = serve(tiny_shards, drop=[shards[0]["path"]])
    data = ClipExamples(manifest_shards(url, "train"), SAMPLER, shuffle_buffer=0)
    seen = {ex.scenes[0] for ex in data}
    broken = f"{url}/{shards[0]['path']}"
    assert broken in data.corrupt.by_shard, data.corrupt.summary()
    assert shards[1]["scene"] in seen  # the intact shard still trains
    bad = verify_shards(url)["bad"]
    assert [b["shard"] for b in bad] == [shards[0]["path"]]


def test_unreachable_or_malformed_remote_roots_are_named(tiny_shards, serve, tmp_path):
    url = serve(tmp_path)  # an empty folder: no manifest there
    with pytest.raises(FileNotFoundError, match=f"{url}/manifest.json"):
        read_manifest(url)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        read_manifest(url)
    with pytest.raises(ValueError, match=r"pipe: root needs \{\}"):
        read_manifest("pipe:cat /nowhere")
    assert remote.shard_root("https://host/a") == "https://host/a"  # not folded into https:/host/a
    assert remote.stream_url("s3://b/k/x.tar") == "pipe:aws s3 cp s3://b/k/x.tar -"


def test_a_pipe_root_reads_through_its_command(tiny_shards):
    root = f"pipe:cat {tiny_shards}/{{}}"
    assert read_manifest(root) == read_manifest(tiny_shards)
    (first,) = examples(manifest_shards(root, "val"))[:1]
    assert first[0] == json.loads((tiny_shards / "manifest.json").read_text())["splits"]["val"]["shards"][0]["scene"]
    assert np.isfinite(first[2].numpy()).all()


@pytest.mark.slow
def test_training_reads_its_shards_over_http(tiny_shards, serve, tmp_path, capsys, monkeypatch):
    import train
    from ffsplat.training.loader_rate import LoaderRateWarning
    from tests.test_training import tiny_config

    steps = []  # the loader-rate check is among the trainer's callbacks and sees every step
    real_end = LoaderRateWarning.on_train_batch_end
    monkeypatch.setattr(LoaderRateWarning, "on_train_batch_end", lambda self, *a: steps.append(1) or real_end(self, *a))

    url = serve(tiny_shards)
    cfg = tiny_config(url, tmp_path, "seg")
    cfg.optim.max_steps = 2
    cfg.data.val_examples = 1
    cfg.trainer.val_every_n_steps = 2
    code, err = train.run(cfg), capsys.readouterr().err
    assert code == 0, err
    assert len(steps) == 2
    assert list((tmp_path / "checkpoints").rglob("*.ckpt")) or list((tmp_path / "checkpoints").rglob("*.pt"))
    bad = tiny_config(url + "/nowhere", tmp_path / "b", "seg")
    assert train.run(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.root") and err.count("\n") == 1 and f"{url}/nowhere/manifest.json" in err, err
