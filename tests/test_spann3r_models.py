"""Spann3R network: parity with the reference fixtures (both cases, every intermediate, per-step
memory state and events), the full-size key manifest, strict loading and bad input.

Fixtures: ../shared/fixtures/spann3r (small random-weight model run through the reference code).
Tolerance (fixture README): max|impl - ref| <= 2e-5 * max|ref| per tensor (per frame / step for
sequences); discrete memory events exactly.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from forward3d.hub import WeightsError
from forward3d.models.spann3r import SPANN3R_FULL, MemoryConfig, Spann3R, Spann3RConfig
from forward3d.models.spann3r.loading import check_duplicate_keys, sizes_from_state_dict
from forward3d.pipelines.slam3r.cameras import estimate_focal

REL_TOL = 2e-5
N_B = 15

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = torch.as_tensor(x).double(), torch.as_tensor(ref).double()
    if tuple(x.shape) != tuple(ref.shape):
        raise AssertionError(f"shape {tuple(x.shape)} vs reference {tuple(ref.shape)}")
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def close(x, ref, what: str, tol: float = REL_TOL) -> float:
    e = rel_err(x, ref)
    assert e <= tol, f"{what}: max|x - ref| / max|ref| = {e:.3g} > {tol}"
    return e


@pytest.fixture(scope="module")
def fx(shared_dir) -> Path:
    return shared_dir / "fixtures" / "spann3r"


@pytest.fixture(scope="module")
def cases(fx):
    return load_file(str(fx / "cases.safetensors"))


@pytest.fixture(scope="module")
def meta(fx):
    return json.loads((fx / "cases.json").read_text())


@pytest.fixture(scope="module")
def small_cfg(fx) -> Spann3RConfig:
    return Spann3RConfig.from_json(fx / "config.json", section="small")


@pytest.fixture(scope="module")
def model(fx, small_cfg) -> Spann3R:
    return Spann3R.from_pretrained(fx / "weights.safetensors", config=small_cfg)


@pytest.fixture(scope="module")
def run_a(model, cases):
    torch.set_num_threads(1)
    with torch.no_grad():
        return model(cases["A.img"], trace=True)


@pytest.fixture(scope="module")
def run_b(model, cases):
    torch.set_num_threads(1)
    with torch.no_grad():
        return model(cases["B.img"], trace=True, track_sources=True)


# ---------------------------------------------------------------------------------------- config
def test_configs_from_fixture_json(fx, small_cfg):
    full = Spann3RConfig.from_json(fx / "config.json", section="full")
    assert full == SPANN3R_FULL()
    assert full.hooks == (0, 6, 9, 12) and full.memory == MemoryConfig(4000, 5, 5e-4, 0.95)
    assert small_cfg.hooks == (0, 2, 3, 4) and small_cfg.dust3r.enc_embed_dim == 128
    assert small_cfg.memory == MemoryConfig(150, 2, 5e-4, 0.8)
    assert Spann3RConfig.from_dict(small_cfg.to_dict()) == small_cfg  # own layout round trip


@pytest.mark.parametrize("bad, match", [
    (dict(value_num_heads=7), "value_num_heads"),
    (dict(dust3r=dict(enc_embed_dim=100, enc_num_heads=16)), "multiple of 4"),
    (dict(dpt=dict(hooks=(0, 2, 3, 40))), "hooks"),
    (dict(memory=dict(work_mem_size=0)), "work_mem_size"),
    (dict(memory=dict(attn_thresh=1.5)), "attn_thresh"),
    (dict(dust3r=dict(depth_mode=("linear", -math.inf, math.inf))), "exp"),
])
def test_config_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        Spann3RConfig(**bad)


def test_config_unknown_keys_and_unsupported(fx):
    with pytest.raises(ValueError, match="unknown Spann3R config keys"):
        Spann3RConfig.from_dict({"enc_depth": 3}, source="x.json")
    d = json.loads((fx / "config.json").read_text())["small"]
    d["spann3r"] = dict(d["spann3r"], use_feat=True)
    with pytest.raises(ValueError, match="use_feat"):
        Spann3RConfig.from_dict(d)
    with pytest.raises(WeightsError, match="no section"):
        Spann3RConfig.from_json(fx / "config.json", section="medium")


# ---------------------------------------------------------------------------------------- manifest
def test_full_size_manifest_on_meta(fx):
    expected = {}
    for line in (fx / "keys_full.txt").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        expected[key] = (json.loads(shape), dtype)
    with torch.device("meta"):
        model = Spann3R(SPANN3R_FULL())
    sd = model.state_dict()
    assert len(sd) == len(expected) == 1101
    assert set(sd) == set(expected)
    for k, v in sd.items():
        assert list(v.shape) == expected[k][0], k
        assert expected[k][1] == "float32" and v.dtype == torch.float32
    unique = sum(p.numel() for p in model.parameters())  # shared DPT convs counted once
    assert round(unique / 1e6, 1) == 658.7
    assert not list(model.buffers())
    # the duplicated DPT keys are one module under two names
    dpt = model.dust3r.downstream_head1.dpt.scratch
    assert dpt.layer1_rn is dpt.layer_rn[0] and dpt.layer4_rn is dpt.layer_rn[3]


# ---------------------------------------------------------------------------------------- case A
def test_case_a_encoder_decoder(run_a, cases):
    tr = run_a.steps[0].trace
    assert cases["A.pos"].tolist() == [[r, c] for r in range(4) for c in range(5)]
    for name in ("patch_embed", "block0", "block1", "out"):
        close(tr[f"enc.{name}"].unflatten(0, (2, 2)), cases[f"A.enc.{name}"], f"A.enc.{name}")
    close(tr["dec.embed"], cases["A.dec.embed"], "A.dec.embed")
    for v in (1, 2):
        for layer in range(5):
            close(tr[f"dec{v}"][layer], cases[f"A.dec{v}.layer{layer}"], f"A.dec{v}.layer{layer}")
        close(tr[f"dec{v}.last_prenorm"], cases[f"A.dec{v}.block3_prenorm"], f"A.dec{v}.block3_prenorm")
    # entry 0 of the head input keeps the encoder width (feat_fuse = feat1 at step 0)
    assert tr["dec1"][0].shape[-1] == 128 and tr["dec1"][1].shape[-1] == 96


def test_case_a_dpt_heads(run_a, cases):
    tr = run_a.steps[0].trace
    for h in (1, 2):
        for i in range(4):
            for part in ("act_postprocess", "layer_rn"):
                close(tr[f"head{h}.{part}{i}"], cases[f"A.head{h}.{part}{i}"], f"A.head{h}.{part}{i}")
        assert tuple(tr[f"head{h}.refinenet4_precrop"].shape[-2:]) == (4, 6)  # odd token width: the crop
        for name in ("refinenet4_precrop", "refinenet3", "refinenet2", "refinenet1", "raw"):
            close(tr[f"head{h}.{name}"], cases[f"A.head{h}.{name}"], f"A.head{h}.{name}")


def test_case_a_outputs_keys_value(run_a, cases, model):
    st = run_a.steps[0]
    tr = st.trace
    close(st.pts1, cases["A.res1.pts3d"], "A.res1.pts3d")
    close(st.conf1, cases["A.res1.conf"], "A.res1.conf")
    close(st.pts2, cases["A.res2.pts3d"], "A.res2.pts3d")
    close(st.conf2, cases["A.res2.conf"], "A.res2.conf")
    for name in ("patch_embed", "block0", "block1", "norm"):
        close(tr[f"value.{name}"], cases[f"A.value.{name}"], f"A.value.{name}")
    for name in ("feat_k1", "feat_k2", "cur_v"):
        close(tr[name], cases[f"A.{name}"], f"A.{name}")
    assert st.memory.size == 20 and not st.memory.skipped and st.memory.sim_corr is None
    # the sequence output: frame 0 = head 1, frame 1 = head 2
    close(run_a.pts3d[0], cases["A.res1.pts3d"], "preds[0]")
    close(run_a.pts3d[1], cases["A.res2.pts3d"], "preds[1]")
    close(run_a.conf[1], cases["A.res2.conf"], "preds[1].conf")


def test_case_a_focal_reference_mode(run_a, cases):
    """The estimator in DUSt3R's mode reproduces the reference focal on the reference point maps;
    from our own point maps the random-weight focal (~0.07 px: points far off-axis) is ill-conditioned,
    amplifying the ~2e-6 point-map differences to 3e-5..3e-4 depending on the CPU's float kernels
    (seen on two machines), hence the looser bound there; the estimator's own parity is the strict
    check on the reference point maps."""
    for b in range(2):
        kw = dict(max_points=None, pixel_offset=0.0, positive_depth_only=False)
        f_ref = estimate_focal(cases["A.res1.pts3d"][b].numpy(), **kw)
        close(torch.tensor([f_ref]), cases["A.focal"][b:b + 1], f"A.focal[{b}] (reference pts)")
        f = estimate_focal(run_a.steps[0].pts1[b].numpy(), **kw)
        close(torch.tensor([f]), cases["A.focal"][b:b + 1], f"A.focal[{b}]", tol=1e-3)


# ---------------------------------------------------------------------------------------- case B
def test_case_b_outputs_per_frame(run_b, cases):
    assert run_b.pts3d.shape == (N_B, 1, 64, 80, 3) and run_b.conf.shape == (N_B, 1, 64, 80)
    for j in range(N_B):
        close(run_b.pts3d[j], cases["B.pts3d"][j], f"B.pts3d[{j}]")
        close(run_b.conf[j], cases["B.conf"][j], f"B.conf[{j}]")
    for s in range(N_B - 1):
        close(run_b.view2_pts3d[s], cases["B.view2.pts3d"][s], f"B.view2.pts3d[{s}]")
        close(run_b.view2_conf[s], cases["B.view2.conf"][s], f"B.view2.conf[{s}]")
    enc = [run_b.steps[0].trace["feat1"], run_b.steps[0].trace["feat2"]] + [s.trace["feat2"] for s in run_b.steps[1:]]
    for j in range(N_B):
        close(enc[j], cases["B.enc_feat"][j], f"B.enc_feat[{j}]")
    f0 = estimate_focal(run_b.pts3d[0, 0].numpy(), max_points=None, pixel_offset=0.0, positive_depth_only=False)
    close(torch.tensor([f0]), cases["B.focal0"], "B.focal0")


def test_case_b_step0_intermediates(run_b, cases):
    tr = run_b.steps[0].trace
    for name in ("patch_embed", "block0", "block1", "out"):
        close(tr[f"enc.{name}"].unflatten(0, (2, 1)), cases[f"B.s0.enc.{name}"], f"B.s0.enc.{name}")
    for v in (1, 2):
        for layer in range(5):
            close(tr[f"dec{v}"][layer], cases[f"B.s0.dec{v}.layer{layer}"], f"B.s0.dec{v}.layer{layer}")
        for name in ("refinenet4_precrop", "refinenet1", "raw"):
            close(tr[f"head{v}.{name}"], cases[f"B.s0.head{v}.{name}"], f"B.s0.head{v}.{name}")
    for name in ("patch_embed", "block1", "norm"):
        close(tr[f"value.{name}"], cases[f"B.s0.value.{name}"], f"B.s0.value.{name}")


def _by_source(src: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Reorder slot tensors [1, S, ...] by (frame, patch) so contents compare regardless of order."""
    order = torch.argsort(src[:, 0] * 100000 + src[:, 1])
    return [t[:, order] for t in tensors]


def test_case_b_per_step_memory_state(run_b, cases):
    for s, st in enumerate(run_b.steps):
        tr, p = st.trace, f"B.step{s:02d}."
        if s >= 1:
            close(tr["query"], cases[p + "query"], p + "query")
            close(tr["feat_fuse"], cases[p + "feat_fuse"], p + "feat_fuse")
            close(tr["read_attn"], cases[p + "read_attn"], p + "read_attn")
            close(st.memory.sim_corr, cases[p + "sim_corr"], p + "sim_corr")
        close(tr["dec1"][-1], cases[p + "dec1_last"], p + "dec1_last")
        close(tr["dec2"][-1], cases[p + "dec2_last"], p + "dec2_last")
        for name in ("feat_k1", "feat_k2", "cur_v"):
            close(tr[name], cases[p + name], p + name)


def test_case_b_memory_after_each_step(model, cases):
    sess = model.session(track_sources=True)
    frames = cases["B.img"]
    with torch.no_grad():
        sess.push(frames[0])
        for s in range(N_B - 1):
            sess.push(frames[s + 1])
            p = f"B.step{s:02d}."
            mem = sess.memory
            ref_src = cases[p + "mem_src"]
            assert mem.src is not None and mem.size == len(ref_src)
            # same slot contents (frame, patch) as a set, in the reference order
            assert sorted(map(tuple, mem.src[0].tolist())) == sorted(map(tuple, ref_src.tolist()))
            mine = _by_source(mem.src[0], mem.keys, mem.values, mem.attn, mem.count)
            ref = _by_source(ref_src, cases[p + "mem_k"], cases[p + "mem_v"], cases[p + "mem_attn"],
                             cases[p + "mem_count"])
            for name, a, b in zip(("mem_k", "mem_v", "mem_attn", "mem_count"), mine, ref):
                close(a, b, p + name)
            assert torch.equal(mine[3], ref[3]), p + "mem_count (exact)"


def test_case_b_memory_events_exact(run_b, cases, meta):
    ev = [s.memory for s in run_b.steps]
    assert [e.size for e in ev] == cases["B.mem.size"].tolist()
    assert [e.wm for e in ev] == cases["B.mem.wm"].tolist()
    assert [e.lm for e in ev] == cases["B.mem.lm"].tolist()
    assert [int(e.skipped) for e in ev] == cases["B.mem.skipped"].tolist()
    assert [int(e.pruned) for e in ev] == cases["B.mem.pruned"].tolist()
    assert [s for s, e in enumerate(ev) if e.skipped] == meta["case_B"]["skip_steps"] == [6]
    assert [s for s, e in enumerate(ev) if e.pruned] == meta["case_B"]["prune_steps"] == [10, 13]
    zeroed = {int(k): v for k, v in meta["checks"]["margins"]["attn_zeroed_per_step"].items()}
    assert {s: st.trace["attn_zeroed"] for s, st in enumerate(run_b.steps) if s >= 1} == zeroed
    for k, step in enumerate((10, 13)):
        e = ev[step]
        close(e.prune_scores, cases[f"B.prune{k}.weights"], f"B.prune{k}.weights")
        assert e.size_before_prune == cases[f"B.prune{k}.weights"].shape[1]
        assert set(e.kept[0].tolist()) == set(cases[f"B.prune{k}.indices"][0, :, 0].tolist())


def test_case_b_prune_sources(model, cases):
    """The slots before each prune (provenance) equal the reference's."""
    sess = model.session(track_sources=True)
    frames = cases["B.img"]
    k = 0
    with torch.no_grad():
        sess.push(frames[0])
        for s in range(N_B - 1):
            before = None if sess.memory.src is None else sess.memory.src[0].clone()
            st = sess.push(frames[s + 1])
            if st.memory.pruned:
                ref = cases[f"B.prune{k}.src_before"]
                # before the prune, this step's write was appended at the end
                full = torch.cat([before, torch.stack([torch.full((20,), s), torch.arange(20)], -1)])
                assert sorted(map(tuple, full.tolist())) == sorted(map(tuple, ref.tolist()))
                kept_ref = {tuple(ref[i].tolist()) for i in cases[f"B.prune{k}.indices"][0, :, 0].tolist()}
                assert {tuple(x) for x in sess.memory.src[0].tolist()} == kept_ref
                k += 1
    assert k == 2


# ---------------------------------------------------------------------------------------- float64
def test_float64_matches_f64_fixtures(fx, small_cfg, cases):
    m64 = Spann3R.from_pretrained(fx / "weights.safetensors", config=small_cfg, dtype=torch.float64)
    with torch.no_grad():
        a = m64(cases["A.img"].double())
        b = m64(cases["B.img"].double())
    assert a.pts3d.dtype == torch.float64
    tol = 1e-6  # fp32 RoPE tables (as the reference) bound the agreement at ~1e-7
    close(a.pts3d[0], cases["A.f64.res1.pts3d"], "A.f64.res1.pts3d", tol)
    close(a.pts3d[1], cases["A.f64.res2.pts3d"], "A.f64.res2.pts3d", tol)
    close(a.conf[1], cases["A.f64.res2.conf"], "A.f64.res2.conf", tol)
    for j in range(N_B):
        close(b.pts3d[j], cases["B.f64.pts3d"][j], f"B.f64.pts3d[{j}]", tol)
        close(b.conf[j], cases["B.f64.conf"][j], f"B.f64.conf[{j}]", tol)
    assert [int(s.memory.skipped) for s in b.steps] == cases["B.mem.skipped"].tolist()


def test_bf16_autocast_close(model, cases):
    """bf16 autocast (heads and memory stay fp32): measured max error 0.027 of max|ref| per frame
    (median point error 0.5%), same skip and prune events."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(cases["B.img"])
    assert out.pts3d.dtype == torch.float32 and torch.isfinite(out.pts3d).all()
    for j in range(N_B):
        assert rel_err(out.pts3d[j], cases["B.pts3d"][j]) < 0.06, f"bf16 pts3d frame {j}"
        assert rel_err(out.conf[j], cases["B.conf"][j]) < 0.03, f"bf16 conf frame {j}"
    assert [int(s.memory.skipped) for s in out.steps] == cases["B.mem.skipped"].tolist()
    assert [int(s.memory.pruned) for s in out.steps] == cases["B.mem.pruned"].tolist()


# ---------------------------------------------------------------------------------------- loading
def test_from_pretrained_pth_folder_and_safetensors(tmp_path, fx, small_cfg, cases, model):
    sd = load_file(str(fx / "weights.safetensors"))
    pth = tmp_path / "spann3r.pth"
    torch.save({"model": sd, "epoch": 3}, pth)  # the official layout
    m_pth = Spann3R.from_pretrained(pth, config=small_cfg)
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(small_cfg.to_dict()))
    m_dir = Spann3R.from_pretrained(folder)
    img = cases["A.img"]
    with torch.no_grad():
        ref = model(img).pts3d
        for m in (m_pth, m_dir):
            assert torch.equal(m(img).pts3d, ref)
    assert not m_dir.training


def test_from_pretrained_refuses_other_size_without_config(fx):
    with pytest.raises(WeightsError, match=r"enc_embed_dim: config 1024 vs weights 128.*attention head"):
        Spann3R.from_pretrained(fx / "weights.safetensors")


def test_from_pretrained_lists_key_problems(tmp_path, fx, small_cfg):
    sd = load_file(str(fx / "weights.safetensors"))
    sd.pop("norm_q.weight")
    sd["extra.weight"] = torch.zeros(1)
    p = tmp_path / "bad.safetensors"
    save_file(sd, str(p))
    with pytest.raises(WeightsError, match=r"(?s)missing keys \(1\):\s+norm_q.weight.*unexpected keys \(1\):\s+extra.weight"):
        Spann3R.from_pretrained(p, config=small_cfg)


def test_inconsistent_duplicate_dpt_keys(fx):
    sd = load_file(str(fx / "weights.safetensors"))
    check_duplicate_keys(sd, "ok")
    k = "dust3r.downstream_head2.dpt.scratch.layer_rn.2.weight"
    sd[k] = sd[k] + 1
    with pytest.raises(WeightsError, match="layer3_rn.weight.*layer_rn.2.weight"):
        check_duplicate_keys(sd, "ckpt")
    assert sizes_from_state_dict(sd)["dpt_layer_dims"] == [16, 24, 32, 48]


def test_missing_local_path_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="not found|no such file"):
        Spann3R.from_pretrained("checkpoints/spann3r.pth")  # looks like owner/name but is a file path
    with pytest.raises(WeightsError, match="no such file"):
        Spann3R.from_pretrained(tmp_path / "nothing" / "spann3r.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        Spann3R.from_pretrained("someone/spann3r")
    assert time.perf_counter() - t0 < 10  # no retries: a hub look-up that retries takes ~23 s


# ---------------------------------------------------------------------------------------- bad input
def test_bad_input(model, cases):
    img = cases["A.img"][0]
    with pytest.raises(ValueError, match="at least 2 frames"):
        model(img[None])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.zeros(2, 1, 3, 60, 80))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.zeros(2, 1, 4, 64, 80))
    with pytest.raises(ValueError, match="portrait"):
        model(torch.zeros(2, 1, 3, 80, 64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.session().push(np.zeros((1, 3, 64, 80)))
    sess = model.session()
    sess.push(img[:1])
    with pytest.raises(ValueError, match="sequence's shape"):
        sess.push(torch.zeros(1, 3, 64, 96))
    with pytest.raises(ValueError, match="memory is empty"):
        model.new_memory().read(torch.zeros(1, 20, 128))


def test_session_streaming_equals_sequence(model, cases):
    frames = cases["B.img"][:5]
    sess = model.session()
    with torch.no_grad():
        assert sess.push(frames[0]) is None
        steps = [sess.push(f) for f in frames[1:]]
        seq = model(frames)
    assert sess.num_frames == 5 and sess.steps == 4
    for s, st in enumerate(steps):
        assert st.step == s
        assert torch.equal(st.pts1, seq.steps[s].pts1) and torch.equal(st.conf2, seq.steps[s].conf2)


def test_push_tokens_and_next_best_view(model, cases):
    """push_tokens = push on pre-encoded frames; push_best picks the candidate a brute-force
    search over copies of the session picks (highest mean (c-1)/c of both heads)."""
    import copy

    frames = cases["B.img"][:6]
    with torch.no_grad():
        tok = model.encode(frames.flatten(0, 1))[:, None]  # [6, 1, T, C]
        a, b = model.session(), model.session()
        a.push(frames[0])
        b.push_tokens(tok[0], (64, 80))
        for k in (1, 2):
            sa, sb = a.push(frames[k]), b.push_tokens(tok[k], (64, 80))
            assert rel_err(sb.pts1, sa.pts1) < 1e-4 and rel_err(sb.pts2, sa.pts2) < 1e-4  # joint vs separate encoding
        scores = []
        for c in (3, 4, 5):
            trial = copy.deepcopy(b)
            st = trial.push_tokens(tok[c], (64, 80))
            scores.append(float(((st.conf1 - 1) / st.conf1).mean() + ((st.conf2 - 1) / st.conf2).mean()))
        k, st = b.push_best([tok[3], tok[4], tok[5]], (64, 80))
    assert k == int(np.argmax(scores)) and b.num_frames == 4
    with pytest.raises(ValueError, match="push the first frame"):
        model.session().push_best([tok[0]], (64, 80))
    with pytest.raises(ValueError, match="encoder tokens"):
        b.push_tokens(torch.zeros(1, 20, 7), (64, 80))
