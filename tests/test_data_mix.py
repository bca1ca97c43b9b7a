"""The dataset-mixing grammar: the reference's strings parse, hostile strings are refused with the
offending token named (and nothing is ever evaluated), and the N-per-epoch sampling semantics."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from forward3d.data.mix import MixtureDataset, MixtureError, build_mixture, parse_mixture
from forward3d.data.sequence import dataset_names
from forward3d.data.views import collate_views

from forward3d.data.mix import config_keys
from forward3d.data.sequence import get_dataset_class

for _name in dataset_names():  # load the registry and resolve the config types now: the hostile-string
    config_keys(get_dataset_class(_name))  # test replaces eval/exec while it runs

# the training strings of the reference's scripts (train_i2p.sh / train_l2w.sh), verbatim
REFERENCE_TRAIN = (
    "4000 @ ScanNetpp_Seq(filter=True, num_views=11, sample_freq=3, split='train', aug_crop=256, resolution=224, "
    "transform=ColorJitter, seed=233) + \n"
    "2000 @ Co3d_Seq(num_views=11, sel_num=3, degree=180, mask_bg='rand', split='train', aug_crop=16, "
    "resolution=224, transform=ColorJitter, seed=233)"
)
REFERENCE_TEST = "1000 @ ScanNetpp_Seq(filter=True, num_views=11, split='test', resolution=224, seed=666)"

SYN = "Synthetic(num_scenes=1, frames_per_scene=10, width=64, height=48, resolution=(64, 48), num_views=3"


def test_reference_strings_parse():
    terms = parse_mixture(REFERENCE_TRAIN)
    assert [(t.size, t.dataset.name) for t in terms] == [(4000, "ScanNetpp"), (2000, "Co3D")]
    assert terms[0].kwargs == {"filter": True, "num_views": 11, "sample_freq": 3, "split": "train", "aug_crop": 256,
                               "resolution": 224, "transform": "ColorJitter", "seed": 233}
    assert terms[1].kwargs["mask_bg"] == "rand" and terms[1].kwargs["degree"] == 180.0
    assert parse_mixture(REFERENCE_TEST)[0].kwargs["split"] == "test"
    t = parse_mixture("ScanNetpp(ROOT='data/scannetpp_processed', resolution=(224, 168), scenes=['a', 'b'])")[0]
    assert t.size is None and t.kwargs == {"root": "data/scannetpp_processed", "resolution": (224, 168),
                                           "scenes": ("a", "b")}
    assert parse_mixture("3 @ TUM(max_depth=1e1, split=None, jitter=(0.1, 0, 0, 0.05))")[0].kwargs["max_depth"] == 10.0
    assert parse_mixture("Synthetic(ref_id=-1, speed=+2)")[0].kwargs == {"ref_id": -1, "speed": 2.0}


HOSTILE = [
    # code execution attempts
    ("__import__('os').system('echo pwned')", "attribute access is not allowed"),
    ("__import__('os')", "unknown dataset `__import__`"),
    ("eval('1')", "unknown dataset `eval`"),
    ("exec('import os')", "unknown dataset `exec`"),
    ("open('/etc/passwd')", "unknown dataset `open`"),
    ("10 @ Synthetic(root=__import__('os').getcwd())", "a call is not allowed in a value: `__import__('os').getcwd()`"),
    ("Synthetic(root=open('/etc/passwd').read())", "a call is not allowed in a value"),
    ("Synthetic(root=os.environ)", "an attribute access is not allowed in a value: `os.environ`"),
    ("Synthetic.__class__", "attribute access"),
    ("Synthetic().__class__.__bases__", "attribute access"),
    ("().__class__.__base__.__subclasses__()", "attribute access"),
    ("Synthetic(num_views=(lambda: 3)())", "a call is not allowed"),
    ("Synthetic(seed=lambda: 0)", "a lambda is not allowed"),
    ("Synthetic(root=f'{__import__(\"os\")}')", "an f-string is not allowed"),
    ("Synthetic(scenes=[x for x in 'ab'])", "a comprehension is not allowed"),
    ("Synthetic(scenes=(x for x in 'ab'))", "a generator expression is not allowed"),
    ("Synthetic(scenes={'a'})", "a set is not allowed"),
    ("Synthetic(jitter={'a': 1})", "a dict is not allowed"),
    ("Synthetic(seed=(s := 3))", "an assignment expression is not allowed"),
    ("Synthetic(root='a'[0])", "a subscript is not allowed"),
    ("Synthetic(seed=1 if 1 else 2)", "a conditional expression is not allowed"),
    ("Synthetic(seed=1 < 2)", "a comparison is not allowed"),
    ("Synthetic(**{'seed': 1})", "`**{'seed': 1}` unpacking is not allowed"),
    ("Synthetic(*[1])", "unpacking is not allowed|positional argument"),
    ("Synthetic(1)", "positional argument `1`"),
    ("Synthetic(seed=b'1')", "a bytes literal is not allowed"),
    ("Synthetic(seed=1j)", "a complex literal is not allowed"),
    ("Synthetic(seed=...)", "a ellipsis literal is not allowed|Ellipsis"),
    ("Synthetic(seed=not 1)", "is not allowed in a value"),
    ("Synthetic(seed=~1)", "is not allowed in a value"),
    # numbers and sizes
    ("Synthetic(seed=10**100)", "an operator expression is not allowed in a value: `10**100`"),
    ("Synthetic(seed=9" + "9" * 30 + ")", "exceeds 10^12"),
    ("Synthetic(seed=" + "9" * 5000 + ")", "cannot parse|invalid syntax|exceeds"),
    ("Synthetic(max_depth=1e999)", "is not finite"),
    ("Synthetic(root='" + "a" * 5000 + "')", "longer than 4096"),
    ("0 @ Synthetic()", "sample count must be in"),
    ("-5 @ Synthetic()", "sample count before '@' must be a positive integer"),
    ("2.5 @ Synthetic()", "must be a positive integer"),
    ("True @ Synthetic()", "must be a positive integer"),
    ("10000000000 @ Synthetic()", "sample count must be in"),
    ("(1 + 1) @ Synthetic()", "is not allowed as the sample count"),
    # structure
    ("", "empty string"),
    ("   ", "empty string"),
    ("Synthetic", "bare name `Synthetic`"),
    ("10 @ 'Synthetic'", "as a mixture term"),
    ("10 * Synthetic()", "only '@' and '+' are allowed"),
    ("10 @ Synthetic() - 5 @ Synthetic()", "only '@' and '+' are allowed"),
    ("Synthetic() and TUM()", "as a mixture term"),
    ("[Synthetic()]", "as a mixture term"),
    ("Synthetic(); import os", "invalid syntax"),
    ("import os", "invalid syntax"),
    ("Synthetic(", "invalid syntax|was never closed"),
    ("Synthetic(seed=1, seed=2)", "given twice|keyword argument repeated"),
    ("Synthetic(seed=1\x00)", "control character"),
    ("(" * 500 + "Synthetic()" + ")" * 500, "too many nested parentheses|cannot parse|invalid syntax"),
    ("Synthetic(jitter=((((((1,),),),),),))", "nest deeper than"),
    ("Synthetic(scenes=(" + ",".join(["'a'"] * 300) + "))", "longer than 256"),
    (" + ".join(["1 @ Synthetic()"] * 100), "more than 64 terms"),
    ("x" * 30000, "longer than the limit"),
    # registry and types
    ("10 @ Foo()", "unknown dataset `Foo`"),
    ("10 @ scannetpp()", "unknown dataset `scannetpp`; did you mean ScanNetpp"),
    ("10 @ Synthetic(bogus=1)", "unknown key `bogus` for Synthetic"),
    ("10 @ Synthetic(num_view=3)", "did you mean num_views"),
    ("10 @ Synthetic(num_views='3')", "`Synthetic.num_views` expects int, found `'3'`"),
    ("10 @ Synthetic(num_views=3.0)", "expects int"),
    ("10 @ Synthetic(num_views=True)", "expects int"),
    ("10 @ Synthetic(filter=1)", "expects bool"),
    ("10 @ Synthetic(transform=ColorJitters)", "bare name `ColorJitters` is not a value"),
    ("10 @ Synthetic(root=ColorJitter)", "bare name `ColorJitter` is not a value"),
    ("10 @ Synthetic(transform='Sepia')", "expects one of 'ImgNorm', 'ColorJitter'"),
    ("10 @ Synthetic(resolution=(224, 168, 3))", "expects int or a tuple"),
    ("10 @ Synthetic(scenes='chess')", "expects a tuple of str"),
    ("10 @ Synthetic(num_views=0)", "num_views: expected >= 1"),
    ("10 @ Co3D(mask_bg='sometimes')", "mask_bg"),
    ("10 @ Synthetic(resolution=(168, 224))", "W >= H"),
]


# (the expected messages are substrings; "|" separates alternatives)
@pytest.mark.parametrize("text, match", HOSTILE, ids=[f"h{i}" for i in range(len(HOSTILE))])
def test_hostile_strings_are_refused(text, match, monkeypatch):
    import ast

    called = []
    real_compile = builtins.compile

    def spy_compile(source, filename, mode, flags=0, *args, **kwargs):
        if not flags & ast.PyCF_ONLY_AST:  # ast.parse compiles to a syntax tree only: allowed
            called.append("compile")
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "compile", spy_compile)
    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, lambda *a, _n=name, **k: called.append(_n))
    try:
        with pytest.raises(MixtureError) as info:
            parse_mixture(text)
    finally:
        monkeypatch.undo()
    assert any(alt in str(info.value) for alt in match.split("|")), str(info.value)
    assert not called  # nothing was evaluated, executed or compiled to code


def test_errors_name_the_position():
    with pytest.raises(MixtureError, match=r"`__import__\('os'\)` \(column 20\)"):
        parse_mixture("5 @ Synthetic(root=__import__('os'))")
    with pytest.raises(MixtureError, match=r"unknown dataset `Nope`.*\(column 25\)"):
        parse_mixture("5 @ Synthetic() + \\\n 5 @ Nope()")
    with pytest.raises(MixtureError, match="expected a string"):
        parse_mixture(b"Synthetic()")  # type: ignore[arg-type]


def test_n_per_epoch_semantics():
    mix = build_mixture(f"25 @ {SYN}) + 4 @ {SYN}, split='test') + {SYN}, seed=4)")
    a, b, c = mix.datasets
    assert mix.sizes == [25, 4, len(c)] and len(mix) == 29 + len(c) and len(a) == 8
    for epoch in (0, 1):
        mix.set_epoch(epoch)
        perm = np.random.default_rng(epoch + 777).permutation(len(a))  # the reference's ResizedDataset
        expect = np.concatenate([perm] * 4)[:25]
        assert [mix.locate(i) for i in range(25)] == [(0, int(j)) for j in expect]
        assert a.epoch == epoch and c.epoch == epoch  # forwarded: per-sample randomness follows the epoch
    assert mix.locate(25)[0] == 1 and mix.locate(29) == (2, 0) and mix.locate(len(mix) - 1) == (2, len(c) - 1)
    counts = np.bincount([mix.locate(i)[1] for i in range(25)], minlength=8)
    assert counts.min() == 3 and counts.max() == 4  # every sample drawn about N / len times
    mix.set_epoch(0)
    s = mix[26]
    assert s.scene == "synthetic_1000000" and len(s.views) == 3
    with pytest.raises(IndexError):
        mix[len(mix)]
    assert repr(mix).startswith("25 @ SyntheticDataset(")


def test_mixture_checks_and_defaults(tmp_path):
    with pytest.raises(ValueError, match=r"mix different \(num_views, resolution\)"):
        build_mixture(f"5 @ {SYN}) + 5 @ {SYN[:-1]}2)")
    mixed = build_mixture(f"5 @ {SYN}) + 5 @ {SYN[:-1]}2)", allow_mixed=True)
    assert len(mixed) == 10
    d = build_mixture("3 @ Synthetic(num_scenes=1, frames_per_scene=6, width=64, height=48)",
                      defaults={"resolution": (32, 24), "num_views": 2, "not_a_field": 1})
    assert d.datasets[0].config.size == (32, 24) and d.datasets[0].config.num_views == 2
    with pytest.raises(MixtureError, match="root .* is not a folder"):
        build_mixture("5 @ TUM(num_views=2)", roots={"TUM": str(tmp_path / "missing")})
    with pytest.raises(MixtureError, match="root is not set"):
        build_mixture("5 @ TUM_Seq(num_views=2)")
    with pytest.raises(ValueError, match="at least one term"):
        MixtureDataset([])


def test_distributed_sampling_over_a_mixture():
    mix = build_mixture(f"12 @ {SYN}) + 6 @ {SYN}, split='test')")
    seen = []
    for rank in range(2):
        sampler = torch.utils.data.DistributedSampler(mix, num_replicas=2, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(1)
        seen.append(list(sampler))
    assert len(seen[0]) == len(seen[1]) == 9 and sorted(seen[0] + seen[1]) == list(range(18))
    loader = torch.utils.data.DataLoader(mix, batch_size=3, sampler=torch.utils.data.DistributedSampler(
        mix, num_replicas=2, rank=0, seed=5), collate_fn=collate_views)
    batch = next(iter(loader))
    assert batch.image.shape == (3, 3, 3, 48, 64)
