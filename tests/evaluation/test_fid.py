"""FID through clean-fid with local stand-in weights: tiny networks built here, no download."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from stand_ins import save_tiny_inception

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation.fid import fid_from_feats, fid_from_folders, files_features, list_images, load_inception
from lmfusion_cli.evaluation.metrics import frechet_distance, gaussian_stats


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    return load_inception(save_tiny_inception(tmp_path_factory.mktemp("weights") / "tiny-inception.pt"))


def _folder(root, name, seed, n=12, res=32):
    folder = root / name
    folder.mkdir()
    for i in range(n):
        shapes.make_item(i, seed, res).image.save(folder / f"{i:03d}.png")
    return folder


def test_fid_of_folders_and_cache(tmp_path, extractor):
    a, b = _folder(tmp_path, "a", 0), _folder(tmp_path, "b", 1)
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        assert x.shape[1:] == (3, 299, 299) and float(x.max()) <= 255.0
        return extractor(x)

    first = fid_from_folders(a, b, counting, "tiny", cache_dir=tmp_path / "cache", batch_size=5)
    assert not first["reference_cached"] and sum(calls) == 24 and first["fid"] > 0
    feats_a = files_features(list_images(a), extractor)
    feats_b = files_features(list_images(b), extractor)
    assert feats_a.shape == (12, 32)
    assert first["fid"] == pytest.approx(fid_from_feats(feats_a, feats_b), rel=1e-6)
    calls.clear()
    second = fid_from_folders(a, b, counting, "tiny", cache_dir=tmp_path / "cache")
    assert second["reference_cached"] and sum(calls) == 12 and second["fid"] == pytest.approx(first["fid"], rel=1e-9)
    other_id = fid_from_folders(a, b, extractor, "another-net", cache_dir=tmp_path / "cache")
    assert not other_id["reference_cached"]  # statistics are keyed by the extractor
    same = fid_from_folders(a, a, extractor, "tiny")
    assert abs(same["fid"]) < 1e-6 * np.trace(gaussian_stats(feats_a)[1])


def test_fid_from_feats_equals_clean_fid():
    from cleanfid.fid import fid_from_feats as clean_fid_from_feats

    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(200, 16)), rng.normal(size=(150, 16)) * 1.2 + 0.1
    assert fid_from_feats(f1, f2) == pytest.approx(float(clean_fid_from_feats(f1, f2)), rel=1e-6)
    mu, s = gaussian_stats(torch.tensor(f1))
    assert fid_from_feats(f1, f2) == pytest.approx(frechet_distance(mu, s, *gaussian_stats(f2)), rel=1e-12)


def test_torchvision_state_dict_weights(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    path = tmp_path / "inception_v3.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    fn = load_inception(path)
    with torch.no_grad():
        feats = fn(torch.rand(2, 3, 299, 299) * 255)
    assert feats.shape == (2, 2048)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="lacks"):
        load_inception(tmp_path / "wrong.pth")
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    with pytest.raises(UserError, match="neither"):
        load_inception(tmp_path / "garbage.pt")


def test_missing_weights_and_folders_are_user_errors(tmp_path, extractor):
    with pytest.raises(UserError, match="inception-2015-12-05.pt") as err:
        load_inception(tmp_path / "inception-2015-12-05.pt")
    assert str(tmp_path / "inception-2015-12-05.pt") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        list_images(tmp_path / "nowhere")
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (8, 8)).save(one / "x.png")
    with pytest.raises(UserError, match="at least 2"):
        fid_from_folders(one, one, extractor, "tiny")


def test_a_torchscript_inception_is_announced_as_code_in_one_line(tmp_path, caplog):
    """Issue 17: `--inception` TorchScript files are programs; loading one says so in one line."""
    path = save_tiny_inception(tmp_path / "tiny-inception.pt")
    with caplog.at_level("WARNING", logger="lmfusion_cli.evaluation.fid"):
        load_inception(path)
    lines = [r.getMessage() for r in caplog.records if "TorchScript program" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0] and "\n" not in lines[0]
