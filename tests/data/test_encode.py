"""`encode-latents` and the latent cache reader: equality with direct VAE encoding, every option,
refusal of a foreign VAE, `--verify`, bad input items, a full disk."""

from __future__ import annotations

import errno
import io
import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import file_entry
from lmfusion_cli.common.vae import default_vae_path
from lmfusion_cli.data.config import EncodeConfig, PrepareConfig
from lmfusion_cli.data.encode import run_encode
from lmfusion_cli.data.images import to_unit_tensor_array
from lmfusion_cli.data.latents import expect_from_vae, open_latent_cache, verify_cache
from lmfusion_cli.data.prepare import run_prepare
from lmfusion_cli.data.shards import Sample, iter_samples, write_shard

from .latent_helpers import make_vae

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    run_prepare(
        build_config(
            PrepareConfig,
            {"out": str(root / "data"), "num_items": 40, "shard_size": 16, "val_fraction": 0.2, "test_fraction": 0.0},
        )
    )
    return root, make_vae(root / "vae"), make_vae(root / "vae2", seed=1)


def ecfg(root, name, vae, **kw) -> EncodeConfig:
    return build_config(
        EncodeConfig,
        {"data": str(root / "data"), "out": str(root / name), "vae": str(vae), "workers": 0, "batch_size": 8, **kw},
    )


def direct(vae_dir, data_dir, flip=False):
    """key → (mean, std) from AutoencoderKL.encode on the shard images, one image at a time."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    out = {}
    for tar in sorted(data_dir.glob("*.tar")):
        for s in iter_samples(tar):
            x = torch.from_numpy(to_unit_tensor_array(Image.open(io.BytesIO(s["image"])).convert("RGB")))[None]
            if flip:
                x = x.flip(-1)
            with torch.no_grad():
                dist = vae.encode(x).latent_dist
            out[s["key"]] = (dist.mean[0], dist.std[0])
    return out


def check_equals_direct(cache, ref, flip=False):
    assert len(cache) == len(ref)
    for i in range(len(cache)):
        item = cache[i]
        mean, std = ref[item["key"]]
        sfx = "_flip" if flip else ""
        assert item["mean" + sfx].dtype == torch.float16
        torch.testing.assert_close(item["mean" + sfx].float(), mean, atol=2e-3, rtol=2e-3)  # fp16 rounding
        torch.testing.assert_close(item["std" + sfx].float(), std, atol=2e-3, rtol=2e-3)


def test_cache_equals_direct_encode_and_reader_scales(setup):
    root, vae, _ = setup
    m = run_encode(ecfg(root, "lat", vae))
    cache = open_latent_cache(root / "lat")
    check_equals_direct(cache, direct(vae, root / "data"))
    assert m["vae"]["scaling_factor"] == 0.5 and m["vae"]["shift_factor"] == pytest.approx(0.1)
    assert m["latent_shape"] == [4, 16, 16] and m["counts"]["kept"] == 40 and m["counts"]["num_skipped"] == 0
    assert sum(m["splits"].values()) == 40 and verify_cache(root / "lat") == []
    # captions/attributes travel with the latents; splits select
    shards = {s["key"]: s for t in sorted((root / "data").glob("*.tar")) for s in iter_samples(t)}
    item = cache[3]
    assert item["caption"] == shards[item["key"]]["caption"]
    assert item["attributes"] == shards[item["key"]]["meta"]["attributes"]
    assert len(open_latent_cache(root / "lat", splits="val")) == m["splits"]["val"]
    # draw: (mean + std * eps - shift) * scale with the generator's eps
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    eps = torch.randn((4, 16, 16), generator=g2)
    want = (item["mean"].float() + item["std"].float() * eps - 0.1) * 0.5
    torch.testing.assert_close(cache.draw(3, g1), want)
    torch.testing.assert_close(cache.to_vae_space(want), item["mean"].float() + item["std"].float() * eps)
    # picklable after use (DataLoader workers reopen the memory maps)
    import pickle

    again = pickle.loads(pickle.dumps(cache))
    assert again[3]["key"] == item["key"] and torch.equal(again[3]["mean"], item["mean"])
    # a rerun with the same settings reuses the finished cache
    before = (root / "lat" / "train-00000.safetensors").stat().st_mtime_ns
    run_encode(ecfg(root, "lat", vae))
    assert (root / "lat" / "train-00000.safetensors").stat().st_mtime_ns == before


def test_shipped_vae_equals_direct_encode(setup):
    if not (default_vae_path() / "config.json").is_file():
        pytest.skip(f"the shipped VAE {default_vae_path()} is not built yet (make assets)")
    root, _, _ = setup
    run_encode(ecfg(root, "lat-shipped", ""))
    check_equals_direct(open_latent_cache(root / "lat-shipped"), direct(default_vae_path(), root / "data"))


def test_other_vae_or_settings_refused_naming_both(setup):
    root, vae, vae2 = setup
    if not (root / "lat" / "manifest.json").exists():
        run_encode(ecfg(root, "lat", vae))
    assert len(open_latent_cache(root / "lat", expect=expect_from_vae(str(vae), 64))) == 40
    with pytest.raises(UserError) as e:
        open_latent_cache(root / "lat", expect=expect_from_vae(str(vae2), 64))
    assert str(vae) in str(e.value) and str(vae2) in str(e.value)
    for key, value in [
        ("resolution", 128),
        ("scaling_factor", 0.18215),
        ("shift_factor", 0.0),
        ("latent_channels", 16),
    ]:
        with pytest.raises(UserError, match=key):
            open_latent_cache(root / "lat", expect={key: value})
    with pytest.raises(UserError, match="manifest"):
        open_latent_cache(root / "data")  # a shards folder is not a latent cache


def test_verify_catches_a_damaged_byte(setup, tmp_path):
    root, vae, _ = setup
    if not (root / "lat" / "manifest.json").exists():
        run_encode(ecfg(root, "lat", vae))
    shutil.copytree(root / "lat", tmp_path / "lat")
    target = tmp_path / "lat" / "train-00001.safetensors"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    problems = verify_cache(tmp_path / "lat")
    assert len(problems) == 1 and "train-00001.safetensors" in problems[0]
    r = subprocess.run(
        [sys.executable, "-m", "lmfusion_cli", "encode-latents", "--verify", str(tmp_path / "lat")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "train-00001.safetensors" in r.stderr and "Traceback" not in r.stderr


def test_options_sample_flip_dtype_resolution(setup):
    root, vae, _ = setup
    m = run_encode(ecfg(root, "lat-opts", vae, flip=True, dtype="bf16", store="sample", seed=3))
    cache = open_latent_cache(root / "lat-opts")
    assert m["store"] == "sample" and m["flip"] and m["dtype"] == "bf16"
    ref, ref_flip = direct(vae, root / "data"), direct(vae, root / "data", flip=True)
    from lmfusion_cli.data.encode_jobs import _item_noise

    for i in (0, 17):
        item = cache[i]
        assert set(item) >= {"sample", "sample_flip"} and item["sample"].dtype == torch.bfloat16
        mean, std = ref[item["key"]]
        fmean, fstd = ref_flip[item["key"]]
        want = mean + std * _item_noise(3, item["key"], (4, 16, 16))
        torch.testing.assert_close(item["sample"].float(), want, atol=2e-2, rtol=1e-2)  # bf16 rounding
        torch.testing.assert_close(
            item["sample_flip"].float(),
            fmean + fstd * _item_noise(3, item["key"] + "_flip", (4, 16, 16)),
            atol=2e-2,
            rtol=1e-2,
        )
        torch.testing.assert_close(cache.draw(i), (item["sample"].float() - 0.1) * 0.5)
    assert not torch.allclose(cache[0]["sample"].float(), cache[0]["sample_flip"].float())
    m = run_encode(ecfg(root, "lat-32", vae, resolution=32, dtype="fp32"))
    assert m["latent_shape"] == [4, 8, 8] and open_latent_cache(root / "lat-32")[0]["mean"].dtype == torch.float32
    with pytest.raises(UserError, match="--overwrite"):
        run_encode(ecfg(root, "lat-32", vae, resolution=32, dtype="fp16"))


def test_bad_items_in_input_shards_are_counted(setup, tmp_path):
    root, vae, _ = setup
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    manifest = json.loads((data / "manifest.json").read_text())
    first = manifest["shards"][0]["name"]
    samples = list(iter_samples(data / first))
    bad = [Sample(s["key"], s["image"], "png", s["caption"], s["meta"]) for s in samples]
    bad[1] = Sample(bad[1].key, b"not a png", "png", bad[1].caption, bad[1].meta)
    bad[2] = Sample(bad[0].key, bad[2].image, "png", "dup", {})  # duplicate key inside the shard
    write_shard(data / first, bad)
    manifest["files"][first] = file_entry(data / first)  # made so by its writer: only a damaged copy is refused
    (data / "manifest.json").write_text(json.dumps(manifest))
    second = manifest["shards"][1]["name"]
    raw = (data / second).read_bytes()
    (data / second).write_bytes(raw[: len(raw) // 2])  # truncated shard
    m = run_encode(
        build_config(
            EncodeConfig,
            {"data": str(data), "out": str(tmp_path / "lat"), "vae": str(vae), "workers": 2, "batch_size": 8},
        )
    )
    reasons = m["counts"]["skipped"]
    assert reasons["corrupt-image"] == 1 and reasons["duplicate-key"] == 1 and reasons["truncated-shard"] == 1
    keys = {(i["key"], i["reason"]) for i in m["skipped_items"]}
    assert (samples[1]["key"], "corrupt-image") in keys and (second, "truncated-shard") in keys
    assert m["counts"]["kept"] == sum(s["count"] for s in m["shards"]) < 40
    assert verify_cache(tmp_path / "lat") == []


def test_disk_full_keeps_finished_shards_and_rerun_completes(setup, tmp_path, monkeypatch):
    import safetensors.torch

    root, vae, _ = setup
    if not (root / "lat" / "manifest.json").exists():
        run_encode(ecfg(root, "lat", vae))
    real, calls = safetensors.torch.save_file, []

    def full_disk(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    cfg = build_config(
        EncodeConfig,
        {"data": str(root / "data"), "out": str(tmp_path / "lat"), "vae": str(vae), "workers": 0, "batch_size": 8},
    )
    with pytest.raises(UserError, match="No space left") as e:
        run_encode(cfg)
    assert "\n" not in str(e.value)
    # shards are encoded in the data manifest's order: the first listed one was finished before the failure
    stem = json.loads((root / "data" / "manifest.json").read_text())["shards"][0]["name"].removesuffix(".tar")
    first = tmp_path / "lat" / f"{stem}.safetensors"
    kept, mtime = first.read_bytes(), first.stat().st_mtime_ns
    assert (tmp_path / "lat" / ".parts" / f"{stem}.json").is_file()
    assert not list((tmp_path / "lat").glob("*.tmp-*")) and not (tmp_path / "lat" / "manifest.json").exists()
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    run_encode(cfg)
    assert first.read_bytes() == kept and first.stat().st_mtime_ns == mtime  # not redone
    for p in (root / "lat").glob("*.safetensors"):
        assert (tmp_path / "lat" / p.name).read_bytes() == p.read_bytes(), p.name
