"""The ``onepeace`` command line: convert, embed, info, demo."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import sys
import warnings
from importlib import resources

import numpy as np
import torch

from .errors import ConfigError, InputError, OnePeaceError

_PYTHON_SHOWWARNING = warnings.showwarning
_VERBOSE = False  # -v of the command this process runs


def _npz_name(path: str) -> str:
    return path if path.endswith(".npz") else path + ".npz"


def _check_out(path: str | None, force: bool, npz: bool = False) -> str | None:
    """An --out file is checked before any work: a file name (not a folder: an existing one, or a
    name ending in '/'), its folder exists and is not a model directory, and it is new unless
    --force. Returns the file that will be written (``.npz`` appended where ``npz`` and missing)."""
    if not path:
        return None
    from .outputs import check_output_file

    check_output_file(path, True)  # the name as given: a folder is an error, not a place for '.npz'
    return check_output_file(_npz_name(path) if npz else path, force, hint="--force")


def _atomic_savez(path: str, **arrays: np.ndarray) -> str:
    """Write ``arrays`` to the .npz ``path`` (``.npz`` appended when missing) atomically; its name."""
    path = _npz_name(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OnePeaceError(f"output directory does not exist: {parent}")
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


#: similarity tables: a full matrix up to this many columns, else each row's best matches
_MAX_COLUMNS, _MAX_ROWS, _TOP_MATCHES = 8, 20, 3


def _print_similarity(emb: dict[str, torch.Tensor], labels: dict[str, list[str]], more: str = "") -> None:
    """Cosine similarities of every pair of modalities, readable for any number of inputs: a
    matrix of at most ``_MAX_COLUMNS`` columns (else each row's ``_TOP_MATCHES`` best columns) and
    ``_MAX_ROWS`` rows, then a count of the rows left out (``more``: where to find them all)."""
    names = list(emb)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sim = emb[a] @ emb[b].T
            cols = [_short(x) for x in labels[b]]
            rows = [_short(x) for x in labels[a]]
            rw = max(len(r) for r in rows)
            shown = sim[:_MAX_ROWS]
            if len(cols) <= _MAX_COLUMNS:
                print(f"\n{a} x {b} cosine similarity (rows: {a}, columns: {b})")
                width = max(8, *(len(c) for c in cols))
                print(" " * rw + "  " + "  ".join(c.rjust(width) for c in cols))
                for r, line in zip(rows, shown.tolist()):
                    print(r.ljust(rw) + "  " + "  ".join(f"{v:+.4f}".rjust(width) for v in line))
            else:
                print(f"\n{a} x {b} cosine similarity: the {_TOP_MATCHES} most similar of the {len(cols)} "
                      f"{b} inputs, per {a} input")
                top = shown.topk(_TOP_MATCHES)
                for r, vals, idx in zip(rows, top.values.tolist(), top.indices.tolist()):
                    print(r.ljust(rw) + "  " + ", ".join(f"{cols[j]} {v:+.4f}" for v, j in zip(vals, idx)))
            if len(rows) > _MAX_ROWS:
                print(f"… {len(rows) - _MAX_ROWS} more {a} rows" + (f"; {more}" if more else ""))
    if len(names) == 1:
        print(f"\n{names[0]}: {len(labels[names[0]])} embeddings of size {emb[names[0]].shape[1]}")


def _short(s: str, n: int = 28) -> str:
    s = os.path.basename(s) if os.path.sep in s else s
    return s if len(s) <= n else s[: n - 1] + "…"


# ---- shared option handling of the inference commands ------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (exit 2), like every other error of the CLI."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(text: str, minimum: int) -> int:
    """An integer option's value, ``minimum`` or more (argparse reports the error in one line)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {n}")
    return n


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _verbose_after_commands(parser: argparse.ArgumentParser) -> None:
    """Accept ``-v`` after any (sub-)command too. Its default there is SUPPRESS, so a sub-command
    without it keeps the value given before the command instead of resetting it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in {id(x): x for x in action.choices.values()}.values():
                if "-v" not in sp._option_string_actions:
                    sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                    help="log progress and warnings")
                _verbose_after_commands(sp)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onepeace")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--device`` and ``--threads`` of the commands that run a model."""
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                   help="compute precision: auto (default: bf16 where the device computes it natively, else "
                        "int8 on CPUs with VNNI, else fp32), fp32, bf16, fp16, or int8 (CPU)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, cuda:N, or auto (cuda when available, else cpu)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")


def _resolve_device(spec: str) -> str:
    """A ``--device`` value as a torch device string; an unavailable device is an error."""
    spec = spec.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {spec!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: CUDA is not available here (torch.cuda.is_available() is False); "
                             "use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise InputError(f"--device {spec}: unsupported device type; use cpu, cuda, cuda:N or auto")
    return str(dev)


def _runtime(args: argparse.Namespace) -> str:
    """Apply ``--threads`` and check ``--device`` (before anything is loaded); the device."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return _resolve_device(getattr(args, "device", "cpu"))


def _note(args: argparse.Namespace, message: str) -> None:
    print(f"onepeace {args.command}: note: {message}", file=sys.stderr)


def _media_files(args: argparse.Namespace, values: list[str], modality: str) -> list[str]:
    """``--image``/``--audio`` values with folders expanded (recursively, sorted, only the files
    whose extension is the modality's; hidden files and folders left out); every path is checked
    to be a readable file before any model is loaded."""
    from .modalities import get_modality

    exts = get_modality(modality).file_extensions
    out: list[str] = []
    for value in values:
        if os.path.isdir(value):
            found, other = [], 0
            for root, dirs, files in os.walk(value):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if f.startswith("."):
                        continue
                    if f.lower().endswith(exts):
                        found.append(os.path.join(root, f))
                    else:
                        other += 1
            if not found:
                raise InputError(f"no {modality} files ({', '.join(exts)}) in the folder {value}")
            if other:
                _note(args, f"{value}: {len(found)} {modality} files; left out {other} files that are not "
                            f"{modality} files ({', '.join(exts)})")
            out += found
        elif os.path.isfile(value):
            if not os.access(value, os.R_OK):
                raise InputError(f"{modality} file is not readable: {value}")
            out.append(value)
        elif os.path.exists(value):
            raise InputError(f"{modality} input is not a file or a folder: {value}")
        else:
            raise InputError(f"{modality} file not found: {value}")
    return out


def _file_modalities() -> list[str]:
    """The registered modalities read from files (image, audio, video, ...), in registration order."""
    from .modalities import get_modality, registered_modalities

    return [m for m in registered_modalities() if get_modality(m).file_extensions]


def _add_media_options(p: argparse.ArgumentParser, metavar: str = "PATH") -> None:
    """``--<modality>`` (files or folders) for every file modality the parser has no option for
    yet: a new modality plug-in gets its flag on every command that takes media."""
    have = {a.dest for a in p._actions}
    for m in _file_modalities():
        if m not in have:
            p.add_argument(f"--{m}", nargs="+", action="extend", default=[], metavar=metavar,
                           help=f"{m} files or folders (searched recursively for {m} files)")


def _media_inputs(args: argparse.Namespace) -> dict[str, list[str]]:
    """The media files of every ``--<modality>`` option given (folders expanded, paths checked),
    in the order of the command's options."""
    media = set(_file_modalities())
    return {m: _media_files(args, v, m) for m, v in vars(args).items() if m in media and v}


def _media_flags() -> str:
    return ", ".join(f"--{m}" for m in _file_modalities())


def _texts(values: list[str], files: list[str] | None = None) -> list[str]:
    """``--text`` values, then the lines of each ``--text-file``: each line exactly as written
    (spaces included, so a line embeds as the same ``--text`` does), without its line ending
    (``\n``, ``\r\n`` or ``\r``) or a UTF-8 byte-order mark; blank and whitespace-only lines are
    left out."""
    texts = list(values)
    for path in files or []:
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                lines = re.split(r"\r\n|\r|\n", f.read())  # line endings only (not str.splitlines' \f, \v, ...)
        except FileNotFoundError:
            raise InputError(f"text file not found: {path}") from None
        except IsADirectoryError:
            raise InputError(f"text file {path} is a directory; give a file with one text per line") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read text file {path}: {e}") from None
        lines = [line for line in lines if line.strip()]
        if not lines:
            raise InputError(f"text file {path} holds no text (one text per line)")
        texts += lines
    return texts


def _names(**inputs: list[str]) -> dict[str, np.ndarray]:
    """Input names as unicode arrays (``<name>_inputs``), readable by ``np.load`` without pickle."""
    return {f"{k}_inputs": np.array([str(x) for x in v], dtype=str) for k, v in inputs.items() if v}


def _rounded(obj, digits: int = 4):
    """Floats of a JSON-able structure rounded to ``digits`` decimals."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints.official import convert

    labels = None
    if args.labels:
        from .tasks.zeroshot import parse_labels

        labels = parse_labels(args.labels)
    config = convert(args.src, args.dst, args.dict, dtype=args.dtype, labels=labels, overwrite=args.force)
    head = f", head: {config.head.num_classes} outputs pooling {config.head.feature_source}" if config.head else ""
    print(
        f"converted {args.src} -> {args.dst} ({', '.join(config.modalities)}; {config.layers} layers, "
        f"dim {config.dim}{head})"
    )
    return 0


def _load_model(path: str, dtype: str | None, device: str = "cpu"):
    from .model.onepeace import OnePeace

    model = OnePeace.from_pretrained(path, dtype=dtype, device=device)
    if _VERBOSE:  # -v: say what --dtype auto chose
        print(f"onepeace: model {path}: computing in {_precision(model)} on {device} (--dtype {dtype or 'as stored'})",
              file=sys.stderr)
    return model


def _precision(model) -> str:
    """The precision ``model`` computes in ("fp32", "bf16", "fp16" or "int8"): what ``--dtype auto``
    chose, recorded in the outputs."""
    p = getattr(model, "precision", None)
    if isinstance(p, str):
        return p
    from .model.quant import is_int8

    if is_int8(model):
        return "int8"
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(model.dtype, str(model.dtype))


def cmd_embed(args: argparse.Namespace) -> int:
    inputs = {"text": _texts(args.text, args.text_file), **_media_inputs(args)}
    inputs = {k: v for k, v in inputs.items() if v}
    if not inputs:
        raise OnePeaceError(f"nothing to embed: give --text, --text-file, {_media_flags()} (files or folders)")
    out = _check_out(args.out, args.force, npz=True)
    device = _runtime(args)
    model = _load_model(args.model, args.dtype, device)
    if args.official_padding_leak and "audio" in model.adapters:
        model.adapters["audio"].official_padding_leak = True
    fused = _embed_with_sound(model, inputs, args) if args.fuse_audio else {}
    emb = model.embed(batch_size=args.batch_size, progress=None, long_audio=args.long_audio,
                      long_text=args.long_text, **inputs) if inputs else {}
    emb.update(fused)
    inputs.update({k: args.fused_inputs[k] for k in fused})
    if out:
        out = _atomic_savez(out, **{k: v.numpy().astype(np.float32) for k, v in emb.items()}, **_names(**inputs),
                            dtype=np.array(_precision(model)))
        print(f"wrote {', '.join(f'{k} {tuple(v.shape)}' for k, v in emb.items())}, the input names "
              f"({', '.join(f'{k}_inputs' for k in emb)}) and the dtype computed in ({_precision(model)}) to {out}")
    _print_similarity(emb, inputs, more=f"all the embeddings are in {out}" if out
                      else "--out FILE.npz saves all the embeddings")
    return 0


def _embed_with_sound(model, inputs: dict[str, list[str]], args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """``--fuse-audio``: the inputs whose files carry sound (videos) embedded each with its own
    soundtrack as one fused sequence, under ``<modality>+audio``; taken out of ``inputs``."""
    if "audio" not in model.modality_names:
        raise InputError(f"--fuse-audio: the model {args.model} has no audio branch to embed the sound with")
    carriers = [m for m in inputs if "audio" in getattr(model.processor.get(m), "companions", ())]
    if not carriers:
        raise InputError("--fuse-audio fuses files with their own sound; none of the inputs carries sound "
                         f"({', '.join(f'--{m}' for m in inputs)})")
    out, args.fused_inputs = {}, {}
    for m in carriers:
        files = inputs.pop(m)
        out[f"{m}+audio"] = model.embed_fused(**{m: files}, batch_size=args.batch_size, progress=None,
                                              fusion=args.fuse_audio)
        args.fused_inputs[f"{m}+audio"] = files
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from .config import list_presets
    from .factory import create_model

    if args.model in list_presets():
        model = create_model(args.model, device="meta")
    else:
        from .checkpoints.format import load_config

        model = create_model(load_config(args.model), device="meta", init=False)
    print(model.config.to_json())
    print(f"parameters: {model.num_parameters():,}")
    return 0


def cmd_demo_video(args: argparse.Namespace) -> int:
    from onepeace_train.demo.video import PAIRS, run_demo_video

    print("onepeace demo-video: aligning a new video branch to the demo model with the align-a-new-modality "
          "recipe,\ntrained on clips against their captions only (never against audio or images).\n")
    m = run_demo_video(args.out, args.demo_model, steps=args.steps, train_clips=args.train_clips,
                       test_clips=args.test_clips, seed=args.seed, force=args.force,
                       keep_checkpoints=args.keep_checkpoints)
    print("\nzero-shot retrieval on held-out clips (unseen digits and voices; relevant = same digit)")
    print(f"{'':>13}  {'R@1':>6}  {'chance':>6}  {'x chance':>8}  {'frame avg':>9}")
    for pair in PAIRS:
        r, b = m["retrieval"][pair], m["baseline_frame_average"][pair]
        note = "   <- emergent: never trained on video-" + pair.split(">")[1] if pair in ("video->audio", "video->image") else ""
        print(f"{pair:>13}  {r['R@1']:6.1f}  {r['chance']:6.1f}  {r['R@1'] / r['chance']:8.1f}  {b['R@1']:9.1f}{note}")
    print("(frame avg: each clip as the mean image embedding of its frames, the image-model baseline)")
    print(f"\nmetrics: {os.path.join(args.out, 'metrics.json')}\nmodel:   {m['model']}")
    ex = m.get("example")
    if ex:  # a held-out clip with its own digit's caption (runs of an earlier onepeace lack it)
        print(f"  onepeace embed --model {m['model']} --video {ex['video']} --text '{ex['text']}'")
    return 0


def _demo_options(args: argparse.Namespace) -> None:
    """Options of one mode (training demo / --samples) given to the other are refused, not ignored."""
    samples_only = {"--preset": args.preset, "--save": args.save}
    training_only = {"--out": args.out, "--stage1-steps": args.stage1_steps, "--stage2-steps": args.stage2_steps,
                     "--keep-checkpoints": args.keep_checkpoints or None,
                     "--extra-voices": args.extra_voices or None, "--augment": args.augment or None,
                     "--plain": args.plain or None, "--robust": args.robust or None}
    if args.plain and args.robust:
        raise ConfigError("--robust is the default recipe and --plain the earlier one; choose one")
    if args.samples:
        given = [k for k, v in training_only.items() if v is not None]
        if given:
            raise ConfigError(f"{given[0]} is an option of the training demo, not of --samples (which embeds the "
                              "bundled samples with an untrained model); drop one of them")
    else:
        given = [k for k, v in samples_only.items() if v is not None]
        if given:
            raise ConfigError(f"{given[0]} only applies with --samples (the training demo always trains the tiny "
                              f"model of its recipes); add --samples, or drop {given[0]}")


def cmd_demo(args: argparse.Namespace) -> int:
    _demo_options(args)
    if args.samples:
        return _demo_samples(args)
    from onepeace_train.demo.run import PAIRS, run_demo

    args.out = args.out or "runs/demo"
    print("onepeace demo: pretraining a tiny ONE-PEACE on handwritten digits (stage 1, image-text) and")
    print("spoken digits (stage 2, audio-text); audio and images never meet in training.\n")
    m = run_demo(args.out, seed=args.seed, stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                 force=args.force, keep_checkpoints=args.keep_checkpoints, extra_voices=args.extra_voices,
                 augment=args.augment, plain=args.plain)
    print("\nzero-shot retrieval on held-out digits and unseen voices (relevant = same digit)")
    print(f"{'':>14}  {'R@1':>6}  {'chance':>6}  {'x chance':>8}")
    for pair in PAIRS:
        r = m["retrieval"][pair]
        note = "   <- emergent: never trained on audio-image pairs" if pair == "audio->image" else ""
        print(f"{pair:>14}  {r['R@1']:6.1f}  {r['chance']:6.1f}  {r['R@1'] / r['chance']:8.1f}{note}")
    for key, title in (("heldout_engine", "a TTS engine never trained on (festival)"),
                       ("heldout_source", "digit images from a source never trained on (fonts)")):
        print(f"\nthe same with {title}")
        for pair, r in m[key].items():
            if isinstance(r, dict):
                print(f"{pair:>14}  {r['R@1']:6.1f}  {r['chance']:6.1f}  {r['R@1'] / r['chance']:8.1f}")
    print(f"\nmetrics: {os.path.join(args.out, 'metrics.json')}   plot: {m['plot']}")
    print(f"model:   {m['model']}")
    if m["kept"]:
        size = sum(m["kept"].values()) / 1e6
        print(f"kept (--keep-checkpoints): {', '.join(m['kept'])} ({size:.0f} MB)")
    print("\nsay or write a digit yourself (docs/demo.md, 'Try it with your own voice'):")
    print(f"  onepeace try --model {m['model']} --audio your_recording.wav --image your_digit.jpg")
    print("\nnext, embed your own inputs with it:")
    print(f"  onepeace embed --model {m['model']} --text 'someone saying seven' --text 'a handwritten digit seven' "
          "--audio your_recording.wav --image your_digit.png")
    from onepeace_train.demo.search import demo_search_step  # last: index the held-out digits, one composed query

    demo_search_step(args.out, m["model"])
    return 0


def cmd_try(args: argparse.Namespace) -> int:
    from onepeace_train.demo.data import DIGIT_WORDS
    from onepeace_train.demo.try_it import classify_digit, prepare_audio, prepare_image

    if not args.audio and not args.image:
        raise InputError("give a recording with --audio REC.wav or a photo of a digit with --image PHOTO.jpg")
    # every input is read and checked before the model loads: a bad file fails at once
    inputs = [("audio", f, prepare_audio(f)) for f in args.audio] + [("image", f, prepare_image(f)) for f in args.image]
    device = _runtime(args)
    model = _load_model(args.model, args.dtype, device)
    for modality, name, media in inputs:
        p = classify_digit(model, modality, media)
        top = p.topk(3)
        best, rest = int(top.indices[0]), list(zip(top.indices[1:].tolist(), top.values[1:].tolist()))
        print(f"{name}: {best} ({DIGIT_WORDS[best]}), probability {float(top.values[0]):.2f}; "
              f"next {', '.join(f'{i} {v:.2f}' for i, v in rest)}")
    return 0


def _demo_samples(args: argparse.Namespace) -> int:
    from .factory import create_model

    if args.save:
        from .checkpoints.format import model_files
        from .outputs import check_output_dir

        check_output_dir(args.save, args.force, owned=model_files(args.save), what="model", hint="--force")
    torch.manual_seed(args.seed)
    samples = resources.files("onepeace").joinpath("assets", "samples")
    images = sorted(str(p) for p in samples.iterdir() if str(p).endswith(".png"))
    sounds = sorted(str(p) for p in samples.iterdir() if str(p).endswith(".wav"))
    texts = ["a red circle", "a blue square", "a green triangle", "a pure tone", "static noise", "a rising chirp"]
    # layer scale 0.1 instead of the official 1e-6, so that untrained layers visibly act
    preset = args.preset or "tiny"
    model = create_model(preset, layer_scale_init=0.1)
    print(f"onepeace demo --samples: preset {preset!r} ({model.num_parameters():,} parameters, random init)")
    print("The weights are untrained, so the similarities only show the pipeline working end to end.")
    emb = model.embed(text=texts, image=images, audio=sounds)
    _print_similarity(emb, {"text": texts, "image": images, "audio": sounds})
    if args.save:
        model.save_pretrained(args.save, overwrite=args.force)
        print(f"\nsaved the model to {args.save}")
    return 0


def _train_config(args: argparse.Namespace):
    """The recipe of ``pretrain`` / ``finetune`` with its overrides (``--output`` included)."""
    from onepeace_train.recipe import load_config

    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"train.output={json.dumps(args.output)}")
    if getattr(args, "init", None):
        overrides.append(f"model.init={json.dumps(args.init)}")
    return load_config(args.config, overrides)


def _report_skipped(command: str, count: int, names: list[str] | None = None, total: int | None = None,
                    what: str = "samples", shown: int = 5) -> None:
    """One stderr line: how many inputs were skipped as unloadable, and the first few by name."""
    if not count:
        return
    line = f"onepeace {command}: skipped {count}" + (f" of {total}" if total else "") + f" {what} that could not be loaded"
    if names:
        line += ": " + ", ".join(names[:shown]) + (f" and {count - shown} more" if count > shown else "")
    print(line + " (`onepeace -v ...` logs why)", file=sys.stderr)


def _report_run_skips(command: str, result: dict, eval_key: str) -> None:
    """End of a training run: skipped training samples, and skipped evaluation samples."""
    _report_skipped(command, result.get("skipped", 0), what="training samples")
    evals = result.get(eval_key, {})
    if eval_key == "retrieval":  # one count for all pairs: they share the eval data
        n = max((m.get("skipped", 0) for m in evals.values()), default=0)
        _report_skipped(command, n, what="evaluation samples")
    else:
        for source, m in evals.items():
            _report_skipped(command, m.get("skipped", 0), what=f"samples of {source}")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from onepeace_train.trainer import run

    cfg = _train_config(args)
    if cfg.task.name:
        raise ConfigError(f"{args.config} is a fine-tuning recipe (task {cfg.task.name!r}): "
                          f"run `onepeace finetune {cfg.task.name} {args.config}`")
    result = run(cfg, existing="restart" if args.force else "refuse")
    if os.environ.get("RANK", "0") == "0":
        final = result.get("final", {})
        print("final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
        for pair, m in result.get("retrieval", {}).items():
            print(f"{pair:>14}  R@1 {m['R@1']:5.1f}  (chance {m['chance']:.1f}; {m['protocol']}-level)")
        _report_run_skips("pretrain", result, "retrieval")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from onepeace_train.trainer import run

    cfg = _train_config(args)
    if cfg.task.name and cfg.task.name != args.task:
        raise ConfigError(f"the recipe {args.config} is for task {cfg.task.name!r}, not {args.task!r}")
    cfg.task.name = args.task
    result = run(cfg, existing="restart" if args.force else "refuse")
    if os.environ.get("RANK", "0") == "0":
        final = result.get("final", {})
        print("final training: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
        for source, m in result.get("eval", {}).items():
            print(f"{source}: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}))
        print(f"model saved to {os.path.join(cfg.train.output, 'model')}")
        _report_run_skips("finetune", result, "eval")
    return 0


def cmd_eval_task(args: argparse.Namespace) -> int:
    from .checkpoints.format import write_text_atomic
    from onepeace_train.finetune.job import evaluate_task

    out = _check_out(args.out, args.force)
    for source in args.data:
        if not os.path.isfile(source):
            raise InputError(f"task manifest {'is not a file' if os.path.exists(source) else 'not found'}: {source}")
    if args.labels and not os.path.isfile(args.labels):
        raise InputError(f"labels file {'is not a file' if os.path.exists(args.labels) else 'not found'}: "
                         f"{args.labels}")
    device = _runtime(args)
    model = _load_model(args.model, args.dtype, device)
    opts = {"multi_label": args.multi_label} if args.multi_label else {}
    if args.labels:
        opts["labels"] = args.labels
    def on_skip(source: str, names: list[str], total: int) -> None:
        _report_skipped(f"eval task ({source})", len(names), names, total)

    metrics = evaluate_task(model, args.task, args.data, batch_size=args.batch_size, on_skip=on_skip,
                            progress=None, **opts)
    for m in metrics.values():  # per data source; each records the precision the model computed in
        if isinstance(m, dict):
            m["dtype"] = _precision(model)
    text = json.dumps(_rounded(metrics), indent=1)
    print(text)
    if out:
        write_text_atomic(out, text + "\n")
    return 0


def _topk_lines(probs: torch.Tensor, labels: list[str], k: int) -> list[str]:
    k = min(k, probs.shape[-1])
    vals, idx = probs.topk(k)
    return [", ".join(f"{labels[i]} {v:.4f}" for v, i in zip(vs.tolist(), ix.tolist())) for vs, ix in zip(vals, idx)]


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from .tasks.zeroshot import check_templates, parse_labels, zero_shot

    inputs = _media_inputs(args)
    if not inputs:
        raise OnePeaceError(f"give {_media_flags()} inputs to classify (files or folders)")
    out = _check_out(args.out, args.force, npz=True)
    labels = parse_labels(args.labels)
    if args.template:
        check_templates(args.template, "--template")
    device = _runtime(args)
    model = _load_model(args.model, args.dtype, device)
    probs = zero_shot(model, labels, templates=args.template or None, batch_size=args.batch_size, progress=None,
                      long_audio=args.long_audio, long_text=args.long_text, **inputs)
    for name, items in inputs.items():
        for item, line in zip(items, _topk_lines(probs[name], labels, args.top_k)):
            print(f"{item}: {line}")
    if out:
        out = _atomic_savez(out, **{k: v.numpy().astype(np.float32) for k, v in probs.items()},
                            labels=np.array(labels), **_names(**inputs), dtype=np.array(_precision(model)))
        print(f"onepeace zeroshot: wrote the probabilities ({', '.join(probs)}), labels, input names and dtype "
              f"to {out}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .tasks.evaluate import check_pair, evaluate_retrieval

    out = _check_out(args.out, args.force)
    check_pair(args.query, args.gallery)  # a modality no plug-in provides: refused before the model loads
    for source in args.data:
        if not (os.path.exists(source) or (glob.has_magic(source) and glob.glob(source))):
            raise InputError(f"data source not found: {source} (give a .jsonl manifest, a .tar shard, "
                             "a directory of shards or a glob)")
    device = _runtime(args)
    model = _load_model(args.model, args.dtype, device)

    def on_skip(names: list[str], used: int) -> None:
        _report_skipped("eval retrieval", len(names), names, used + len(names))

    m = evaluate_retrieval(model, args.data, args.query, args.gallery, args.batch_size, args.protocol, on_skip,
                           progress=None)
    m["dtype"] = _precision(model)
    scores = "  ".join(f"{k} {v:.2f}" for k, v in m.items() if isinstance(v, float))
    print(f"{args.query} -> {args.gallery} ({m['protocol']}-level, {m['queries']} queries, "
          f"{m['gallery']} distinct gallery items, {m['dtype']}): {scores}")
    if m.get("no_match"):
        _note(args, f"{m['no_match']} of the {m['queries']} queries have no relevant {args.gallery} item (e.g. "
                    "caption-only lines under the instance protocol) and are not scored")
    if out:
        from .checkpoints.format import write_text_atomic

        write_text_atomic(out, json.dumps({f"{args.query}->{args.gallery}": _rounded(m)}, indent=2))
    return 0


def cmd_ground(args: argparse.Namespace) -> int:
    images, texts = _media_files(args, args.image, "image"), list(args.text)
    if len(texts) == 1:
        texts *= len(images)
    if len(texts) != len(images):
        raise InputError(f"ground pairs the texts with the images in order: got {len(images)} images and "
                         f"{len(texts)} texts; give one --text per image, or one for all of them")
    device = _runtime(args)
    model = _load_model(args.model, args.dtype, device)
    for i in range(0, len(images), args.batch_size):
        chunk = slice(i, i + args.batch_size)
        for img, txt, b in zip(images[chunk], texts[chunk], model.ground(images[chunk], texts[chunk]).tolist()):
            print(json.dumps({"image": img, "text": txt, "box": [round(v, 2) for v in b]}))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    inputs = {"image": _media_files(args, args.image, "image"), "audio": _media_files(args, args.audio, "audio"),
              "text": list(args.text), "image2": _media_files(args, args.image2, "image")}
    inputs = {k: v for k, v in inputs.items() if v}
    if not (inputs.get("image") or inputs.get("audio")):
        raise OnePeaceError("give --image or --audio inputs (files or folders)")
    if len({len(v) for v in inputs.values()}) > 1:
        raise InputError("inputs classified together are paired in order, so each needs the same count; got "
                         + ", ".join(f"{len(v)} --{k}" for k, v in inputs.items()))
    out = _check_out(args.out, args.force, npz=True)
    device = _runtime(args)
    model = _load_model(args.model, args.dtype, device)
    if args.official_padding_leak and "audio" in model.adapters:
        model.adapters["audio"].official_padding_leak = True
    head = model.config.head
    if head is None:
        raise OnePeaceError(f"{args.model} has no classification head (convert a fine-tuned checkpoint)")
    if head.type == "dense":
        raise OnePeaceError(f"{args.model} is a segmentation model: use `onepeace segment`")
    logits = model.classify(batch_size=args.batch_size, **inputs)
    labels = head.labels or [str(i) for i in range(head.num_classes)]
    items = inputs.get("image") or inputs["audio"]
    probs = logits.sigmoid() if args.multi_label else logits.softmax(-1)
    for item, line in zip(items, _topk_lines(probs, labels, args.top_k)):
        print(f"{item}: {line}")
    if out:
        out = _atomic_savez(out, logits=logits.numpy().astype(np.float32), labels=np.array(labels, dtype=str),
                            **_names(**inputs), dtype=np.array(_precision(model)))
        print(f"onepeace classify: wrote the logits, labels, input names and dtype to {out}", file=sys.stderr)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from .checkpoints.format import write_png_atomic

    images = _media_files(args, args.image, "image")
    dests: list = [None] * len(images)
    if args.out_dir:  # checked before any work: one new PNG per image, existing ones only with --force
        from .outputs import check_output_files, check_output_folder_not_model

        check_output_folder_not_model(args.out_dir, "--out-dir")
        names = [os.path.splitext(os.path.basename(item))[0] + ".png" for item in images]
        dests = check_output_files(args.out_dir, names, args.force, sources=images, hint="--force")
    device = _runtime(args)
    model = _load_model(args.model, args.dtype, device)
    maps = model.segment(images)
    labels = model.config.head.labels or [str(i) for i in range(model.config.head.num_classes)]
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
    for item, m, dest in zip(images, maps, dests):
        counts = torch.bincount(m.flatten(), minlength=len(labels)).float() / m.numel()
        top = counts.topk(min(args.top_k, len(labels)))
        shown = ", ".join(f"{labels[i]} {v:.1%}" for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0)
        line = f"{item}: {shown}"
        if dest:
            write_png_atomic(dest, m.numpy().astype(np.uint8 if len(labels) <= 256 else np.uint16))
            line += f"  -> {dest}"
        print(line)
    return 0


def _add_max_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-pixels", type=_positive_int, metavar="N",
                        help="decode images of up to N pixels (default: Pillow's decompression-bomb limit, "
                             "about 89 million); raise it for huge images you trust")


def _add_long_audio(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--long-audio", choices=["truncate", "chunk"], default="truncate",
                        help="clips over 15 s: truncate (official, the default: the first 15 s, with a "
                             "warning) or chunk (the duration-weighted mean of 15 s window embeddings)")
    parser.add_argument("--long-text", choices=["truncate", "chunk"], default="truncate",
                        help="texts over the model's 70 tokens: truncate (official, the default: the first 70 "
                             "tokens, with a warning) or chunk (the token-weighted mean of 70-token window "
                             "embeddings)")


def _show_warnings_as_lines(command: str) -> None:
    """Print onepeace's own warnings as one `onepeace CMD: warning: ...` line on stderr, with or
    without -v; other warnings keep Python's format."""
    from .errors import OnePeaceWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, OnePeaceWarning):
            print(f"onepeace {command}: warning: {message}", file=file or sys.stderr)
        else:
            _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onepeace", description="ONE-PEACE: vision, audio and language in one space")
    p.add_argument("--version", action="version", version=f"onepeace {_version()}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and warnings (also after the command)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert an official ONE-PEACE .pt checkpoint to an onepeace directory")
    c.add_argument("src", help="official checkpoint (one-peace.pt, finetune_*.pt, or the vision-branch .pkl)")
    c.add_argument("dst", help="output directory (config.json + model.safetensors)")
    c.add_argument("--dict", help="the official dict.txt (needed for checkpoints with a text branch)")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="stored precision (default fp32)")
    c.add_argument("--labels", help="class names for a classification head (.txt one per line, or .json)")
    c.add_argument("--force", action="store_true",
                   help="replace a model already in DST (atomically; never a folder holding other files)")
    c.set_defaults(func=cmd_convert)

    e = sub.add_parser("embed", help="embed texts, images and audio; print cross-modal similarities")
    e.add_argument("--model", required=True,
                   help="an onepeace model directory, or a Hugging Face Hub id org/name[@revision]")
    e.add_argument("--text", nargs="+", action="extend", default=[], metavar="TEXT",
                   help="texts (several per flag; the flag may repeat)")
    e.add_argument("--text-file", action="append", default=[], metavar="FILE", help="texts, one per line (repeatable)")
    e.add_argument("--image", nargs="+", action="extend", default=[], metavar="PATH",
                   help="image files or folders (searched recursively for image files)")
    e.add_argument("--audio", nargs="+", action="extend", default=[], metavar="PATH",
                   help="audio files or folders (searched recursively for audio files)")
    _add_media_options(e)
    e.add_argument("--fuse-audio", nargs="?", const="joint", choices=["joint", "late"], metavar="joint|late",
                   help="embed each file that carries sound (a video) with its own soundtrack: one embedding per "
                        "file, saved as <modality>+audio (e.g. video+audio); joint (the default): one fused "
                        "sequence; late: the mean of separate video and sound embeddings (better for retrieval "
                        "with a model not trained on fused audio-visual sequences)")
    e.add_argument("--out", help="write float32 arrays text/image/audio and the input names "
                                 "text_inputs/image_inputs/audio_inputs to this .npz")
    e.add_argument("--batch-size", type=_positive_int, default=16)
    _add_runtime_options(e)
    e.add_argument("--official-padding-leak", action="store_true",
                   help="reproduce the official batch-dependent audio padding (off: batch-invariant)")
    e.add_argument("--force", action="store_true", help="overwrite an existing --out file (default: refuse it, before any work)")
    _add_long_audio(e)
    _add_max_pixels(e)
    e.set_defaults(func=cmd_embed)

    i = sub.add_parser("info", help="print the config and parameter count of a model directory, Hub id or preset")
    i.add_argument("model")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="the laptop demo: tri-modal pretraining on bundled digits (~5 min)")
    d.add_argument("--out", help="run directory (default runs/demo); an unfinished demo there is resumed")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--stage1-steps", type=int, help="override stage 1's step count")
    d.add_argument("--stage2-steps", type=int, help="override stage 2's step count")
    d.add_argument("--extra-voices", action="store_true",
                   help="train stage 2 on the added voices too (more espeak-ng variants, flite)")
    d.add_argument("--augment", action="store_true",
                   help="train with much heavier audio and image augmentation (onepeace_train.demo.run.HEAVY_AUGMENT; at "
                        "the demo's step budget it costs accuracy, see docs/research.md)")
    d.add_argument("--plain", action="store_true",
                   help="the earlier recipe: stage 2 for 150 steps without augmentation (about a minute "
                        "shorter, worse on unseen voices; for comparisons)")
    d.add_argument("--robust", action="store_true",
                   help="the default recipe (stage 2 for 250 steps with mild audio augmentation); the flag is "
                        "kept so earlier commands still run")
    d.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the stages' checkpoints, models and shards (default: removed once the demo finished)")
    d.add_argument("--samples", action="store_true", help="instead: embed the bundled samples with an untrained model")
    d.add_argument("--preset", help="with --samples: the model preset (default tiny)")
    d.add_argument("--save", help="with --samples: save the untrained model here")
    d.add_argument("--force", action="store_true",
                   help="run again over a finished demo in --out (or, with --samples, replace the --save model)")
    d.set_defaults(func=cmd_demo)

    tr = sub.add_parser("try", help="say or write a digit: the demo model names it, with its probability")
    tr.add_argument("--audio", action="append", default=[], metavar="REC",
                    help="a recording of one spoken digit (any rate and format soundfile reads, up to 10 s; "
                         "silence before and after is trimmed); repeatable")
    tr.add_argument("--image", action="append", default=[], metavar="PHOTO",
                    help="a photo or scan of one handwritten digit (centred and contrast-normalised like the "
                         "training digits); repeatable")
    tr.add_argument("--model", default="runs/demo/model", help="the demo model (default runs/demo/model)")
    _add_runtime_options(tr)
    tr.set_defaults(func=cmd_try)
    dv = sub.add_parser("demo-video", help="align a video branch to the demo model on generated digit clips "
                                           "(after `onepeace demo`; ~10 min)")
    dv.add_argument("--demo-model", default="runs/demo/model", help="the trained demo model (default runs/demo/model)")
    dv.add_argument("--out", default="runs/demo-video", help="run directory (default runs/demo-video); an "
                                                             "unfinished run there is resumed")
    dv.add_argument("--seed", type=int, default=0)
    dv.add_argument("--steps", type=_positive_int, help="training steps (default 300)")
    dv.add_argument("--train-clips", type=_positive_int, help="generated training clips (default 3000)")
    dv.add_argument("--test-clips", type=_positive_int, help="generated held-out clips (default 300)")
    dv.add_argument("--keep-checkpoints", action="store_true", help="keep the training checkpoints")
    dv.add_argument("--force", action="store_true", help="run again over a finished video demo in --out")
    dv.set_defaults(func=cmd_demo_video)

    t = sub.add_parser("pretrain", help="pretrain (one process, or under torchrun --nproc-per-node N)")
    t.add_argument("config", help="a TOML recipe (see configs/)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-4")
    t.add_argument("--output", help="run directory (same as train.output=...)")
    t.add_argument("--from", dest="init", metavar="MODEL",
                   help="start from this trained model directory (same as model.init=...), e.g. to align a new "
                        "modality to it with configs/align_new_modality.toml")
    t.add_argument("--force", action="store_true",
                   help="train from scratch in an --output holding a finished run (its checkpoints are discarded) "
                        "or other files (left alone); default: refuse, resume an unfinished run")
    t.set_defaults(func=cmd_pretrain)

    f = sub.add_parser("finetune", help="fine-tune on a task: classify, retrieval, grounding, vqa, aqa, nlvr2, segmentation")
    f.add_argument("task", help="the task (see the fine-tuning table in docs/training.md)")
    f.add_argument("config", help="a TOML recipe (see configs/finetune_*.toml)")
    f.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-4")
    f.add_argument("--output", help="run directory (same as train.output=...)")
    f.add_argument("--force", action="store_true",
                   help="train from scratch in an --output holding a finished run (its checkpoints are discarded) "
                        "or other files (left alone); default: refuse, resume an unfinished run")
    f.set_defaults(func=cmd_finetune)

    z = sub.add_parser("zeroshot", help="zero-shot classification of images or audio by class names")
    z.add_argument("--model", required=True)
    z.add_argument("--labels", required=True, help="a file (one per line, or .json) or a,b,c")
    z.add_argument("--image", nargs="+", action="extend", default=[], metavar="PATH", help="image files or folders")
    z.add_argument("--audio", nargs="+", action="extend", default=[], metavar="PATH", help="audio files or folders")
    _add_media_options(z)
    z.add_argument("--template", action="append", default=[],
                   help="prompt with {} for the label (repeatable; default: ensemble per modality, "
                        "'This is a sound of {}.' for audio)")
    z.add_argument("--top-k", type=_positive_int, default=5)
    z.add_argument("--out", help="write probabilities per modality, labels and the input names to this .npz")
    z.add_argument("--batch-size", type=_positive_int, default=16)
    _add_runtime_options(z)
    z.add_argument("--force", action="store_true", help="overwrite an existing --out file (default: refuse it, before any work)")
    _add_long_audio(z)
    _add_max_pixels(z)
    z.set_defaults(func=cmd_zeroshot)

    ev = sub.add_parser("eval", help="evaluation: `onepeace eval retrieval ...`")
    evs = ev.add_subparsers(dest="eval_command", required=True)
    r = evs.add_parser("retrieval", help="R@1/5/10 and mean rank between two modalities, emergent pairs too")
    r.add_argument("--model", required=True)
    r.add_argument("--data", action="append", required=True, help="JSONL manifest or shards (repeatable)")
    r.add_argument("--query", required=True, help="text or a modality of the model (image, audio, video, ...)")
    r.add_argument("--gallery", required=True, help="text or a modality of the model (image, audio, video, ...)")
    r.add_argument("--batch-size", type=_positive_int, default=32)
    _add_runtime_options(r)
    r.add_argument("--protocol", choices=["auto", "instance", "class"], default="auto",
                   help="relevance over distinct items: instance (an item matches its own captions / the item "
                        "of the same label), class (same label); auto: class when a label spans several "
                        "media files (see docs/cli.md)")
    r.add_argument("--out", help="write the metrics as JSON")
    r.add_argument("--force", action="store_true", help="overwrite an existing --out file (default: refuse it, before any work)")
    _add_max_pixels(r)
    r.set_defaults(func=cmd_eval)
    et = evs.add_parser("task", help="a fine-tuned model's task metric on a task manifest")
    et.add_argument("task", help="classify, retrieval, grounding, vqa, aqa, nlvr2 or segmentation")
    et.add_argument("--model", required=True)
    et.add_argument("--data", action="append", required=True, help="task manifest (repeatable)")
    et.add_argument("--multi-label", action="store_true", help="classify: multi-label (mAP)")
    et.add_argument("--labels", help="vqa: the answer vocabulary file (default: the head's labels)")
    et.add_argument("--batch-size", type=_positive_int, default=16)
    _add_runtime_options(et)
    et.add_argument("--out", help="write the metrics as JSON")
    et.add_argument("--force", action="store_true", help="overwrite an existing --out file (default: refuse it, before any work)")
    _add_max_pixels(et)
    et.set_defaults(func=cmd_eval_task)

    g = sub.add_parser("ground", help="visual grounding: the box (x0, y0, x1, y1) in pixels, as JSON")
    g.add_argument("--model", required=True, help="a converted grounding checkpoint")
    g.add_argument("--image", nargs="+", action="extend", required=True, metavar="PATH",
                   help="image files or folders")
    g.add_argument("--text", nargs="+", action="extend", required=True, metavar="TEXT",
                   help="one expression per image, in order, or one for all of them")
    g.add_argument("--batch-size", type=_positive_int, default=16)
    _add_runtime_options(g)
    _add_max_pixels(g)
    g.set_defaults(func=cmd_ground)

    k = sub.add_parser("classify", help="top-k labels of a fine-tuned classifier (e.g. VGGSound)")
    k.add_argument("--model", required=True)
    k.add_argument("--image", nargs="+", action="extend", default=[], metavar="PATH", help="image files or folders")
    k.add_argument("--audio", nargs="+", action="extend", default=[], metavar="PATH", help="audio files or folders")
    k.add_argument("--text", nargs="+", action="extend", default=[], metavar="TEXT",
                   help="paired texts for fused (vl/al) heads, in input order")
    k.add_argument("--image2", nargs="+", action="extend", default=[], metavar="PATH",
                   help="NLVR2 heads: the second image of each pair, in order")
    k.add_argument("--top-k", type=_positive_int, default=5)
    k.add_argument("--multi-label", action="store_true", help="sigmoid scores instead of softmax")
    k.add_argument("--out", help="write the logits, labels and input names to this .npz (keys 'logits', 'labels', "
                                 "'image_inputs', ...)")
    k.add_argument("--batch-size", type=_positive_int, default=16)
    _add_runtime_options(k)
    k.add_argument("--official-padding-leak", action="store_true")
    k.add_argument("--force", action="store_true", help="overwrite an existing --out file (default: refuse it, before any work)")
    _add_max_pixels(k)
    k.set_defaults(func=cmd_classify)

    sg = sub.add_parser("segment", help="semantic segmentation: a class map per image (PNG) and its class shares")
    sg.add_argument("--model", required=True, help="a model fine-tuned with `onepeace finetune segmentation`")
    sg.add_argument("--image", nargs="+", action="extend", required=True, metavar="PATH",
                    help="image files or folders")
    sg.add_argument("--out-dir", help="write one PNG of class ids per image here, at the image's own size")
    sg.add_argument("--top-k", type=_positive_int, default=5)
    _add_runtime_options(sg)
    sg.add_argument("--force", action="store_true",
                    help="overwrite PNGs already in --out-dir (default: refuse them, before any work)")
    _add_max_pixels(sg)
    sg.set_defaults(func=cmd_segment)

    from .data.cli import add_data_parser

    add_data_parser(sub)
    from .search.cli import add_search_parsers

    add_search_parsers(sub)
    from .checkpoints.download import add_download_parser

    add_download_parser(sub)
    from .serve.cli import add_serve_parser

    add_serve_parser(sub)
    from .export.cli import add_export_parser

    add_export_parser(sub)
    _verbose_after_commands(p)
    return p


def _is_override(arg: str) -> bool:
    """``section.key=value``: a recipe override of ``pretrain`` / ``finetune``."""
    key = arg.split("=", 1)[0]
    return "=" in arg and not arg.startswith("-") and "." in key and " " not in key


def main(argv: list[str] | None = None) -> int:
    """The ``onepeace`` command; returns its exit status. A reader that stops early (``| head``)
    ends it quietly with status 141 (128 + SIGPIPE), as a coreutils tool killed by SIGPIPE."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return 141


def _stdout_to_devnull() -> None:
    """After a broken pipe: what is still buffered for stdout goes nowhere (else Python's final
    flush fails again and prints 'Exception ignored ... BrokenPipeError')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (captured in tests): nothing buffered there
        pass


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # allow `onepeace pretrain CONFIG --optim.lr=1e-4` as well as `optim.lr=1e-4`
    argv = [a[2:] if a.startswith("--") and "=" in a and "." in a.split("=", 1)[0] else a for a in argv]
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # recipe overrides (section.key=value) may also come after options: `pretrain CFG --output D optim.lr=1`
        if extra and isinstance(getattr(args, "overrides", None), list) and all(_is_override(a) for a in extra):
            args.overrides += extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # a usage error (already printed), --help or --version
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    global _VERBOSE
    _VERBOSE = bool(args.verbose)
    _show_warnings_as_lines(args.command)
    if getattr(args, "max_pixels", None):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = args.max_pixels  # process-wide: this process runs this one command
    try:
        return args.func(args)
    except OnePeaceError as e:
        print(f"onepeace {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except MemoryError:
        print(f"onepeace {args.command}: error: out of memory; try a smaller --batch-size or fewer inputs",
              file=sys.stderr)
        return 1
    except ImportError as e:
        missing = f" ({e.name})" if getattr(e, "name", None) else ""
        print(f"onepeace {args.command}: error: a module this command needs is missing{missing}: {e}; "
              "reinstall onepeace with the extra it needs (see docs/install.md)", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permission denied, ... on a file the command reads or writes
        where = f": {e.filename}" if e.filename else ""
        print(f"onepeace {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a bug: one line for the user, the traceback with -v
        logging.getLogger("onepeace.cli").info("traceback of the internal error", exc_info=True)
        print(f"onepeace {args.command}: internal error: {type(e).__name__}: {e} (a bug in onepeace: please "
              "report it with the command; `onepeace -v ...` shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
