"""Faults injected into training: non-finite losses, signals, a process killed outright."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import typing
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from multidiff import config as C
from multidiff import train as T
from multidiff.checkpoint import list_checkpoints
from multidiff.cli import main
from multidiff.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _poison(monkeypatch, bad_steps: set[int]) -> None:
    """Make the loss NaN on the given (1-based) optimizer steps."""
    real = T.diffusion_loss
    calls = {"n": 0}

    def loss(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] in bad_steps else out

    monkeypatch.setattr(T, "diffusion_loss", loss)


def _state(tr: Trainer) -> tuple[dict, dict]:
    return (
        {k: v.clone() for k, v in tr.net.state_dict().items()},
        {k: v.clone() for k, v in tr.ema.state_dict().items()},
    )


def test_a_nonfinite_step_is_skipped_and_leaves_weights_and_ema_alone(tmp_path: Path, monkeypatch) -> None:
    _poison(monkeypatch, {3})
    tr = Trainer(C.resolve_config(tiny_run(tmp_path / "r", train={"steps": 5})))
    batches = tr._loader()
    for _ in range(2):
        tr.train_step(batches)
    before = _state(tr)
    tr.train_step(batches)  # the NaN step (the loop around it warns; see the next test)
    assert tr.skipped
    after = _state(tr)
    assert tr.step == 3
    for b, a in zip(before, after):
        assert all(torch.equal(b[k], a[k]) for k in b)
    tr.train_step(batches)
    assert not tr.skipped and not all(torch.equal(before[0][k], tr.net.state_dict()[k]) for k in before[0])
    assert all(torch.isfinite(p).all() for p in tr.net.parameters())


def _optimizer_state(tr: Trainer) -> list[tuple[str, torch.Tensor]]:
    st = tr.opt.state_dict()
    return [(f"{i}.{k}", v.clone()) for i, s in st["state"].items() for k, v in s.items()]  # moments, step counts


@pytest.mark.parametrize("grad_clip", [1.0, None], ids=["clipped", "unclipped"])
def test_an_inf_gradient_with_a_finite_loss_is_skipped_leaving_weights_optimizer_and_ema_alone(
    tmp_path: Path, grad_clip: float | None
) -> None:
    tr = Trainer(C.resolve_config(tiny_run(tmp_path / "r", train={"steps": 5, "grad_clip": grad_clip})))
    batches = tr._loader()
    for _ in range(2):
        tr.train_step(batches)
    poison = {"on": True}

    def hook(g: torch.Tensor) -> torch.Tensor:  # one element of one parameter's gradient becomes +inf
        if not poison["on"]:
            return g
        g = g.clone()
        g.view(-1)[0] = float("inf")
        return g

    param = next(p for p in tr.net.parameters() if p.requires_grad and p.numel() > 1)
    handle = param.register_hook(hook)
    before, opt_before = _state(tr), _optimizer_state(tr)
    loss, gnorm = tr.train_step(batches)
    assert torch.isfinite(loss) and not torch.isfinite(gnorm)  # the loss alone would not tell
    assert tr.skipped and tr.step == 3
    after, opt_after = _state(tr), _optimizer_state(tr)
    for b, a in zip(before, after):
        assert all(torch.equal(b[k], a[k]) for k in b)
    assert [k for k, _ in opt_before] == [k for k, _ in opt_after] and len(opt_before) > 1
    assert all(torch.equal(b, a) for (_, b), (_, a) in zip(opt_before, opt_after))
    assert all(p.grad is None for p in tr.net.parameters())  # nothing carried into the next step
    poison["on"] = False
    handle.remove()
    tr.train_step(batches)
    assert not tr.skipped and all(torch.isfinite(p).all() for p in tr.net.parameters())
    assert not all(torch.equal(before[0][k], tr.net.state_dict()[k]) for k in before[0])


def test_the_loop_warns_logs_good_steps_only_and_finishes(tmp_path: Path, monkeypatch) -> None:
    _poison(monkeypatch, {2, 3})
    tr = Trainer(C.resolve_config(tiny_run(tmp_path / "r", train={"steps": 5, "log_every": 5})))
    with pytest.warns(RuntimeWarning) as caught:
        result = tr.fit()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "step 2: non-finite loss" in messages[0] and "(2 in a row)" in messages[1]
    assert result.step == 5 and len(result.losses) == 1 and result.losses[0][1] == result.losses[0][1]
    assert all(torch.isfinite(p).all() for p in tr.ema.parameters())


def test_too_many_nonfinite_steps_stop_with_the_last_good_weights_saved(tmp_path: Path, monkeypatch, capsys) -> None:
    _poison(monkeypatch, {3, 4, 5})
    run = tmp_path / "r"
    d = tiny_run(run, train={"steps": 10, "max_nonfinite_steps": 3})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    good = {}

    real_step = Trainer.train_step

    def spy(self, batches):
        if self.step == 2:
            good.update({k: v.clone() for k, v in self.net.state_dict().items()})
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", spy)
    with pytest.warns(RuntimeWarning):
        code = main(["train", str(tmp_path / "c.yaml")])
    assert code == 1
    err = capsys.readouterr().err
    assert "3 steps in a row had a non-finite loss or gradient" in err and "step_00000005" in err
    ck = list_checkpoints(run)[-1]
    assert ck.name == "step_00000005"
    saved = load_file(str(ck / "model.safetensors"))
    assert all(torch.equal(saved[k], good[k]) for k in good)


def _write_config(tmp_path: Path, steps: int, every: int) -> Path:
    d = tiny_run(
        tmp_path / "run", train={"steps": steps, "checkpoint_every": every, "log_every": 1, "deterministic": True}
    )
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _launch(cfg: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "multidiff", "train", str(cfg), "--set", "train.threads=1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_a_logged_step(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    f = run / "metrics.csv"
    while not (f.is_file() and len(f.read_text().splitlines()) > 1):  # the header and one step's row
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "no step was logged"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_write_a_checkpoint_and_exit_0(tmp_path: Path, sig: int) -> None:
    # no periodic checkpoints: the one found afterwards can only be the one the signal asked for
    cfg = _write_config(tmp_path, steps=100_000, every=0)
    proc = _launch(cfg)
    _wait_for_a_logged_step(tmp_path / "run", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted at step" in out and "continue with --resume" in out
    step = int(out.split("interrupted at step ")[1].split(";")[0])
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [f"step_{step:08d}"]


# --- hostile and broken files ------------------------------------------------------------------


def test_a_truncated_checkpoint_is_refused_by_name_and_the_previous_one_still_loads(tmp_path: Path, capsys) -> None:
    run = tmp_path / "r"
    Trainer(C.resolve_config(tiny_run(run, train={"steps": 4, "checkpoint_every": 2}))).fit()
    old, new = list_checkpoints(run)
    f = new / "ema.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a write cut short
    assert main(["sample", str(run), "-n", "2", "--steps", "2", "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {f}" in err and f"earlier checkpoint: {old}" in err and not (tmp_path / "a.png").exists()
    assert main(["sample", str(old), "-n", "2", "--steps", "2", "--out", str(tmp_path / "b.png")]) == 0
    (new / "ema.safetensors").unlink()
    (new / "model.safetensors").write_bytes(b"\x00" * 64)  # garbage
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(run, train={"steps": 6})))
    assert main(["train", str(cfg), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(new / "model.safetensors") in err and f"--resume {old}" in err
    assert main(["train", str(cfg), "--resume", str(old)]) == 0


def _config_models() -> list[type]:
    from multidiff import registry
    from multidiff.text import HFTextConfig, LearnedTextConfig, MiniLMTextConfig

    models = [C.RunConfig, C.DiffusionConfig, C.TrainConfig, C.SampleConfig, *C.SCHEDULE_CONFIGS.values()]
    models += [LearnedTextConfig, MiniLMTextConfig, HFTextConfig]
    for name in ("image", "audio", "voxel"):
        adapter = registry.load_modality(name)
        models += [adapter.ModelConfig, adapter.DataConfig]
    return models


def _literals(t: object) -> list:
    own = list(typing.get_args(t)) if typing.get_origin(t) is typing.Literal else []
    return own + [v for a in typing.get_args(t) for v in _literals(a)]


# the fuzz speaks the configs' own vocabulary (every section's keys, every Literal value) besides noise
_MODELS = _config_models()
_KEYS = sorted({k for m in _MODELS for k in m.model_fields})
_VALUES = list({repr(v): v for m in _MODELS for f in m.model_fields.values() for v in _literals(f.annotation)}.values())
_VALUES += ["image", "audio", "voxel", "euler", "ddim"]
_FUZZ = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(_VALUES),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _shown(key: object) -> str:
    """A key as a config error shows it in a dotted path: plain names as they are, others quoted."""
    return str(key) if isinstance(key, int) or re.fullmatch(r"[A-Za-z0-9_-]+", str(key)) else repr(key)


def _paths(d: object, prefix: str = "") -> set[str]:
    """Every dotted path in a nested dict (list items by position), as an error would show it."""
    out = {prefix}
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        out |= _paths(v, f"{prefix}.{_shown(k)}" if prefix else _shown(k))
    return out


def _problems(message: str) -> list[str]:
    """The problem lines of a ConfigError's message (one, or a counted list)."""
    head = "invalid config <dict>"
    assert message.startswith(head), message
    if message.startswith(head + ": "):
        return [message[len(head) + 2 :]]
    first, *lines = message.split("\n")
    assert re.fullmatch(rf"{head}, (\d+) problems:", first) and int(first.split()[3]) == len(lines) > 1, message
    assert all(line.startswith("  ") for line in lines), message
    return [line[2:] for line in lines]


def _names_a_key_of(line: str, cand: dict) -> bool:
    """The line starts with a dotted path that is in ``cand``, a top-level section, or a key missing
    below a path that is in ``cand``."""
    paths = _paths(cand)
    if any(line.startswith(f"{p}: ") for p in (paths - {""}) | set(C.RunConfig.model_fields)):
        return True
    return any(re.match(re.escape(f"{p}.") * bool(p) + r"[A-Za-z_]\w*: missing required key", line) for p in paths)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FUZZ, st.sampled_from(["image", "audio", "voxel"]))
def test_a_fuzzed_config_gives_a_config_error_naming_the_key_never_a_traceback(d, modality: str) -> None:
    base = tiny_run(Path("unused"))
    if modality != "image":
        base.update(modality=modality, model={"preset": "tiny"}, data={})
    candidates = [{**base, **d} if isinstance(d, dict) else {"modality": d}]
    candidates += [{**base, s: d} for s in ("model", "data", "diffusion", "train", "sample")]
    candidates += [{**base, "diffusion": {"schedule": d}}, {**base, "sample": {"sampler": "euler", "options": d}}]
    candidates += [d] if isinstance(d, dict) else []
    for cand in candidates:
        try:
            C.resolve_config(cand)
        except C.ConfigError as e:  # the project's error, one line per problem, each naming its key
            for line in _problems(str(e)):
                assert _names_a_key_of(line, cand), (line, cand)


def _good_and_bad(tmp_path: Path, modality: str) -> tuple[Path, list[str]]:
    """A folder of 3 good files in two classes plus a corrupt, a truncated, an empty and a
    wrong-type file; returns it and the bad files' names."""
    import numpy as np
    import soundfile as sf
    import trimesh
    from PIL import Image

    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    rng = np.random.default_rng(0)
    png, wav = tmp_path / "x.png", tmp_path / "x.wav"
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(png)
    sf.write(wav, 0.1 * np.sin(np.arange(4000) / 5.0), 8000, subtype="PCM_16")
    suffix = {"image": ".png", "audio": ".wav", "voxel": ".ply"}[modality]

    def good(p: Path, i: int) -> None:
        if modality == "image":
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(p)
        elif modality == "audio":
            sf.write(p, 0.1 * np.sin(np.arange(4000) * (i + 1) / 9.0), 8000, subtype="PCM_16")
        else:
            trimesh.creation.icosphere(1, radius=0.5 + 0.1 * i).export(p)

    for i, p in enumerate([root / "a" / f"g0{suffix}", root / "a" / f"g1{suffix}", root / "b" / f"g2{suffix}"]):
        good(p, i)
    raw = (root / "a" / f"g0{suffix}").read_bytes()
    bad = {
        f"corrupt{suffix}": bytes(rng.integers(0, 256, 300, dtype=np.uint8)),
        f"truncated{suffix}": raw[: 20 if modality == "audio" else len(raw) // 3],  # audio: inside the header
        f"empty{suffix}": b"",
        f"wrongtype{suffix}": (wav if modality == "image" else png).read_bytes(),
    }
    for name, content in bad.items():
        (root / "b" / name).write_bytes(content)
    return root, sorted(bad)


def _data_config(modality: str, root: Path, policy: str) -> dict:
    d = tiny_run(Path("unused"))
    if modality == "image":
        d["data"] = {"source": "folder", "path": str(root), "size": 8, "on_bad_file": policy}
    elif modality == "audio":
        d.update(modality="audio", model={"preset": "tiny"})
        d["data"] = {"source": "folder", "path": str(root), "sample_rate": 8000, "length": 1024, "on_bad_file": policy}
    else:
        d.update(modality="voxel", model={"preset": "tiny"})
        d["data"] = {"source": "folder", "path": str(root), "resolution": 8, "on_bad_file": policy}
    return d


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} | {
        "__names__": "\n".join(str(p.relative_to(root)) for p in sorted(root.rglob("*"))).encode()
    }


@pytest.mark.parametrize("modality", ["image", "audio", "voxel"])
def test_bad_files_stop_the_run_by_name_or_are_skipped_and_counted(tmp_path: Path, modality: str) -> None:
    root, bad = _good_and_bad(tmp_path, modality)
    before = _snapshot(root)
    cfg = C.resolve_config(_data_config(modality, root, "error"))
    with pytest.raises(ValueError, match=r"data.on_bad_file: skip") as e:
        cfg.adapter.build_dataset(cfg.data)
    assert any(name in str(e.value) for name in bad), str(e.value)
    # one at a time: each bad file alone is refused with its own name
    for name in bad:
        others = [n for n in bad if n != name]
        for n in others:
            (root / "b" / n).rename(tmp_path / n)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            cfg.adapter.build_dataset(cfg.data)
        for n in others:
            (tmp_path / n).rename(root / "b" / n)
    cfg = C.resolve_config(_data_config(modality, root, "skip"))
    with pytest.warns(UserWarning, match=r"skipped 4 of 7 .* could not be read"):
        ds, info = cfg.adapter.build_dataset(cfg.data)
    assert len(ds) == 3 and info.extra["skipped_files"] == 4 and info.class_names == ("a", "b")
    assert sorted(int(y) for _, y in (ds[i] for i in range(len(ds)))) == [0, 0, 1]
    assert _snapshot(root) == before  # nothing in the data folder was written, moved or deleted


# --- resources ------------------------------------------------------------------------------


def test_out_of_memory_says_what_to_lower(tmp_path: Path, monkeypatch, capsys) -> None:
    def oom(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "_micro_loss", oom)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(tmp_path / "r")))
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "out of memory on cpu at train.batch_size=16" in err and "--set train.batch_size=8" in err
    assert "train.grad_accum=2" in err and "Tried to allocate 2.00 GiB" in err


# Run in a child process whose address space is capped (RLIMIT_AS) once the model is built: a batch
# whose activations do not fit then fails inside the CPU allocator, whatever the machine's overcommit
# setting; 1 GiB of headroom fits the tiny model on 64x64 digits at batch 16, not at batch 1536.
_CAPPED = textwrap.dedent(
    """
    import resource, sys
    from multidiff.cli import main
    import multidiff.train as T

    real_fit = T.Trainer.fit

    def fit(self):
        used = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (used + HEADROOM, resource.getrlimit(resource.RLIMIT_AS)[1]))
        return real_fit(self)

    T.Trainer.fit = fit
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize("batch", [16, 1536])
def test_a_real_allocation_failure_under_a_memory_limit_gets_the_same_advice(tmp_path: Path, batch: int) -> None:
    cfg = tmp_path / "c.yaml"
    d = tiny_run(tmp_path / "r", train={"batch_size": batch, "steps": 2, "threads": 1})
    d["data"] = {"source": "digits", "size": 64}
    cfg.write_text(yaml.safe_dump(d))
    (tmp_path / "capped.py").write_text(_CAPPED.replace("HEADROOM", str(1 << 30)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, str(tmp_path / "capped.py"), "train", str(cfg)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    if batch == 16:  # the cap leaves room for the run the config asks for
        assert out.returncode == 0 and "done: step 2" in out.stdout, out.stdout + out.stderr
        return
    assert out.returncode == 1, out.stdout + out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"out of memory on cpu at train.batch_size={batch}" in err[0], err
    assert f"--set train.batch_size={batch // 2}" in err[0] and "can't allocate memory" in err[0], err


def test_a_full_disk_stops_cleanly_with_the_last_good_checkpoint_intact(tmp_path: Path, monkeypatch, capsys) -> None:
    import errno

    from multidiff import checkpoint as CK

    real = CK.torch.save
    calls = {"n": 0}

    def full(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint's state.pt
            Path(f).write_bytes(b"\0" * 10)  # part of it got out
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(CK.torch, "save", full)
    run = tmp_path / "r"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(run, train={"steps": 6, "checkpoint_every": 2})))
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "cannot write checkpoint" in err and "No space left on device" in err
    assert f"the last good checkpoint {run / 'checkpoints' / 'step_00000002'} is intact" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]  # no half-written folder
    monkeypatch.setattr(CK.torch, "save", real)
    assert main(["train", str(cfg), "--resume"]) == 0
    assert [p.name for p in list_checkpoints(run)][-1] == "step_00000006"


def test_a_yaml_config_that_would_run_code_is_refused_without_running_it(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"modality: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", str(cfg)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err and not marker.exists()


def test_deterministic_turns_on_deterministic_algorithms(tmp_path: Path) -> None:
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        Trainer(C.resolve_config(tiny_run(tmp_path / "r", train={"deterministic": True})))
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
