"""RealEstate10K single-view NVS evaluation: split files, oracles, unproject baseline, Flash3D, CLI."""

import json

import pytest
import torch

from forward3d.data.re10k import write_re10k_layout
from forward3d.data.re10k_dataset import RE10KEvalDataset, read_split_file
from forward3d.data.synthetic import SyntheticScene
from forward3d.eval.nvs import (BlankPredictor, Flash3DPredictor, OraclePredictor, UnprojectPredictor, evaluate_nvs,
                                score_images)
from forward3d.models.flash3d import Flash3D, Flash3DConfig, save_checkpoint

SIZE = dict(height=64, width=96, pad=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("re10k_test")
    scenes = {f"seq{i}": SyntheticScene(num_frames=12, width=96, height=64, seed=10 + i, speed=0.5) for i in range(2)}
    write_re10k_layout(root, scenes, split="test", colmap_scale=0.5)
    split = root / "test_files.txt"
    # seq src +5 +10 rand (frame indices); the last line's "random" target is the source itself (+0)
    split.write_text("# comment\nseq0 0 5 10 3\nseq1 1 6 11 0\nmissing 0 5 10 2\nseq1 4 9 11 4\n")
    return root, split


def test_read_split_file(tmp_path, data):
    root, split = data
    lines = read_split_file(split)
    assert [(ln.seq, ln.src, ln.targets) for ln in lines][:2] == [("seq0", 0, (5, 10, 3)), ("seq1", 1, (6, 11, 0))]
    assert len(read_split_file(split, max_lines=2)) == 2
    bad = tmp_path / "bad.txt"
    bad.write_text("seq0 0 5 10\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 'seq src"):
        read_split_file(bad)
    bad.write_text("seq0 0 five 10 3\n")
    with pytest.raises(ValueError, match="integer"):
        read_split_file(bad)
    bad.write_text("seq0 0 5 10 99\n")
    ds = RE10KEvalDataset(root, bad, **SIZE)
    with pytest.raises(ValueError, match="out of range"):
        ds[0]
    with pytest.raises(ValueError, match="out of range"):
        evaluate_nvs(ds, OraclePredictor())
    rep = evaluate_nvs(ds, OraclePredictor(), skip_bad_lines=True)
    assert rep.lines == [] and "out of range" in rep.skipped[0]
    ds = RE10KEvalDataset(root, split, **SIZE)
    assert len(ds) == 3 and len(ds.skipped) == 1
    s = ds[0]
    assert s.kinds == ["+5", "+10", "random"] and s.views.shape == (3, 3, 64, 96) and s.frame_ids == [0, 5, 10, 3]


def test_oracle_and_blank(data):
    ds = RE10KEvalDataset(data[0], data[1], **SIZE)
    perfect = evaluate_nvs(ds, OraclePredictor()).mean()
    blank = evaluate_nvs(ds, BlankPredictor()).mean()
    for kind in ("+5", "+10", "random"):
        assert perfect[kind]["psnr"] > 60 and perfect[kind]["ssim"] == pytest.approx(1.0, abs=1e-6)
        assert blank[kind]["psnr"] < 12 and blank[kind]["ssim"] < 0.2
        assert perfect[kind]["count"] == 3


def test_score_images_crop_and_lpips():
    from forward3d.eval.lpips import LPIPS

    x = torch.rand(2, 3, 64, 96)
    y = x.clone()
    y[..., :2, :] = 0.0  # only inside the 5% border: cropped away (ceil(0.05 * 64) = 4 rows)
    m = score_images(y, x, lpips=LPIPS())
    assert (m["psnr"] == 100.0).all() and m["ssim"] == pytest.approx([1.0, 1.0]) and m["lpips"] == pytest.approx([0, 0])


def test_unproject_baseline_with_gt_depth(data):
    ds = RE10KEvalDataset(data[0], data[1], **SIZE)
    rep = evaluate_nvs(ds, UnprojectPredictor())
    m = rep.mean()
    blank = evaluate_nvs(ds, BlankPredictor()).mean()
    assert m["+5"]["psnr"] > blank["+5"]["psnr"] + 5
    plus0 = rep.lines[2].psnr[2]  # the source rendered from its own Gaussians
    assert plus0 > 25 and plus0 > m["+10"]["psnr"]
    assert set(rep.per_sequence()) == {"seq0", "seq1"}
    assert "28.46" in rep.table()


def test_flash3d_random_weights_end_to_end(data, tmp_path, capsys):
    torch.manual_seed(0)
    model = Flash3D(Flash3DConfig(num_layers=18, height=64, width=96, pad_border=32))
    ds = RE10KEvalDataset(data[0], data[1], max_lines=1, **SIZE)
    rep = evaluate_nvs(ds, Flash3DPredictor(model))
    m = rep.mean()
    assert all(0 < m[k]["psnr"] < 60 and -1 < m[k]["ssim"] < 1 for k in ("+5", "+10", "random"))
    # the same through the CLI, from a checkpoint, with JSON out
    from forward3d.cli import main

    save_checkpoint(tmp_path / "model.pth", model)
    out = tmp_path / "res.json"
    rc = main(["eval", "nvs", "--protocol", "re10k-1view", "--data", str(data[0]), "--split", str(data[1]),
               "--weights", str(tmp_path / "model.pth"), "--height", "64", "--width", "96", "--pad", "32",
               "--max-lines", "1", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "28.46" in printed and "+10" in printed
    res = json.loads(out.read_text())
    assert res["method"] == "flash3d" and res["num_lines"] == 1
    assert res["mean"]["+5"]["psnr"] == pytest.approx(m["+5"]["psnr"], abs=1e-4)
    assert res["published"]["Flash3D"]["random"]["psnr"] == 24.93


def test_cli_unproject_json_and_errors(data, tmp_path, capsys):
    from forward3d.cli import main

    out = tmp_path / "u.json"
    rc = main(["eval", "nvs", "--data", str(data[0]), "--split", str(data[1]), "--method", "unproject",
               "--height", "64", "--width", "96", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["mean"]) == {"+5", "+10", "random"} and res["skipped_lines"] == ["missing 0 5 10 2"]
    assert set(res["per_sequence"]["seq1"]) == {"+5", "+10", "random"} and len(res["lines"]) == 3
    capsys.readouterr()
    rc = main(["eval", "nvs", "--data", str(data[0]), "--split", str(tmp_path / "none.txt"), "--method", "unproject"])
    assert rc == 2 and "split file not found" in capsys.readouterr().err
    rc = main(["eval", "nvs", "--data", str(data[0]), "--split", str(data[1]), "--method", "blank",
               "--lpips-weights", str(tmp_path / "vgg.pth")])
    assert rc == 2 and "vgg16-397923af" in capsys.readouterr().err
