"""The training commands of ``onepeace``: ``demo``, ``try``, ``demo-video``, ``pretrain``,
``finetune``, ``adapt`` (and ``adapt merge``) and ``eval task``.

The library's command line (:mod:`onepeace.cli`) finds :func:`register` through the entry point
``train`` of the group ``onepeace.commands`` (pyproject.toml) and never imports this package. The
trainer, the recipes and the demos are imported when a command runs, so that ``onepeace --help``
and the library's commands do not load them.
"""

from __future__ import annotations

import argparse
import json
import os
from importlib import resources

import torch

from onepeace import create_model
from onepeace.checkpoints.format import model_files, write_text_atomic
from onepeace.cli import common
from onepeace.cli.common import (
    add_adapter_option,
    add_max_pixels,
    add_runtime_options,
    check_out,
    positive_int,
    precision,
    print_similarity,
    report_skipped,
    rounded,
    runtime,
)
from onepeace.errors import ConfigError, InputError
from onepeace.outputs import check_output_dir

_TRAIN_FORCE = ("train from scratch in an --output holding a finished run (its checkpoints are discarded) "
                "or other files (left alone); default: refuse, resume an unfinished run")


# ---- demo --------------------------------------------------------------------------------------

def _demo_options(args: argparse.Namespace) -> None:
    """Options of one mode (training demo / --samples) given to the other are refused, not ignored."""
    samples_only = {"--preset": args.preset, "--save": args.save}
    training_only = {"--out": args.out, "--stage1-steps": args.stage1_steps, "--stage2-steps": args.stage2_steps,
                     "--keep-checkpoints": args.keep_checkpoints or None,
                     "--extra-voices": args.extra_voices or None, "--augment": args.augment or None,
                     "--plain": args.plain or None, "--no-context": args.no_context or None,
                     "--robust": args.robust or None}
    if args.robust and (args.plain or args.no_context):
        other = "--plain the earlier one" if args.plain else "--no-context the one before the word in context"
        raise ConfigError(f"--robust is the default recipe and {other}; choose one")
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


def _print_demo_results(args: argparse.Namespace, m: dict, pairs) -> None:
    print("\nzero-shot retrieval on held-out digits and unseen voices (relevant = same digit)")
    print(f"{'':>14}  {'R@1':>6}  {'chance':>6}  {'x chance':>8}")
    for pair in pairs:
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


def cmd_demo(args: argparse.Namespace) -> int:
    _demo_options(args)
    if args.samples:
        return _demo_samples(args)
    from .demo.moments import demo_moment_step
    from .demo.run import PAIRS, run_demo
    from .demo.search import demo_search_step

    args.out = args.out or "runs/demo"
    print("onepeace demo: pretraining a tiny ONE-PEACE on handwritten digits (stage 1, image-text) and")
    print("spoken digits (stage 2, audio-text); audio and images never meet in training.\n")
    m = run_demo(args.out, seed=args.seed, stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                 force=args.force, keep_checkpoints=args.keep_checkpoints, extra_voices=args.extra_voices,
                 augment=args.augment, plain=args.plain, context=not args.no_context)
    _print_demo_results(args, m, PAIRS)
    demo_search_step(args.out, m["model"])  # index the held-out digits, one composed query
    demo_moment_step(args.out, m["model"])  # last: a long recording of held-out words, one moment query
    return 0


def _demo_samples(args: argparse.Namespace) -> int:
    if args.save:
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
    print_similarity(emb, {"text": texts, "image": images, "audio": sounds})
    if args.save:
        model.save_pretrained(args.save, overwrite=args.force)
        print(f"\nsaved the model to {args.save}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="the laptop demo: tri-modal pretraining on bundled digits (~10 min)")
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
                   help="the earlier recipe: stage 2 for 150 steps without augmentation (a few minutes "
                        "shorter, worse on unseen voices; for comparisons)")
    d.add_argument("--no-context", action="store_true",
                   help="stage 2 as before the word in context: 250 steps with tempo and noise augmentation only, "
                        "no silence around the word nor bed under it (for comparisons)")
    d.add_argument("--robust", action="store_true",
                   help="the default recipe (stage 2 for 400 steps with mild audio augmentation and the word in "
                        "context); the flag is kept so earlier commands still run")
    d.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the stages' checkpoints, models and shards (default: removed once the demo finished)")
    d.add_argument("--samples", action="store_true", help="instead: embed the bundled samples with an untrained model")
    d.add_argument("--preset", help="with --samples: the model preset (default tiny)")
    d.add_argument("--save", help="with --samples: save the untrained model here")
    d.add_argument("--force", action="store_true",
                   help="run again over a finished demo in --out (or, with --samples, replace the --save model)")
    d.set_defaults(func=cmd_demo)


# ---- try and demo-video ------------------------------------------------------------------------

def cmd_try(args: argparse.Namespace) -> int:
    from .demo.data import DIGIT_WORDS
    from .demo.try_it import TRIM, classify_digit, prepare_audio, prepare_image

    if not args.audio and not args.image:
        raise InputError("give a recording with --audio REC.wav or a photo of a digit with --image PHOTO.jpg")
    # every input is read and checked before the model loads: a bad file fails at once
    trim = TRIM if args.trim is None else args.trim
    inputs = ([("audio", f, prepare_audio(f, trim=trim)) for f in args.audio]
              + [("image", f, prepare_image(f)) for f in args.image])
    device = runtime(args)
    model = common.load_model(args.model, args.dtype, device, args.adapter)
    for modality, name, media in inputs:
        p = classify_digit(model, modality, media)
        top = p.topk(3)
        best, rest = int(top.indices[0]), list(zip(top.indices[1:].tolist(), top.values[1:].tolist()))
        print(f"{name}: {best} ({DIGIT_WORDS[best]}), probability {float(top.values[0]):.2f}; "
              f"next {', '.join(f'{i} {v:.2f}' for i, v in rest)}")
    return 0


def cmd_demo_video(args: argparse.Namespace) -> int:
    from .demo.video import PAIRS, run_demo_video

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


def _cmd_demo_adapt(args: argparse.Namespace) -> int:
    from .demo.adapt import print_intro, print_results, run_demo_adapt

    print_intro()
    print_results(run_demo_adapt(args.out, args.demo_model, seed=args.seed, force=args.force))
    return 0


def _add_try_and_demo_video(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("try", help="say or write a digit: the demo model names it, with its probability")
    tr.add_argument("--audio", action="append", default=[], metavar="REC",
                    help="a recording of one spoken digit (any rate and format soundfile reads, up to 10 s; "
                         "silence before and after is trimmed); repeatable")
    tr.add_argument("--image", action="append", default=[], metavar="PHOTO",
                    help="a photo or scan of one handwritten digit (centred and contrast-normalised like the "
                         "training digits); repeatable")
    tr.add_argument("--trim", action=argparse.BooleanOptionalAction, default=None,
                    help="trim the silence before and after the word (default: --trim; --no-trim hears the "
                         "recording as it is)")
    tr.add_argument("--model", default="runs/demo/model", help="the demo model (default runs/demo/model)")
    add_adapter_option(tr)
    add_runtime_options(tr)
    tr.set_defaults(func=cmd_try)
    dv = sub.add_parser("demo-video", help="align a video branch to the demo model on generated digit clips "
                                           "(after `onepeace demo`; ~10 min)")
    dv.add_argument("--demo-model", default="runs/demo/model", help="the trained demo model (default runs/demo/model)")
    dv.add_argument("--out", default="runs/demo-video", help="run directory (default runs/demo-video); an "
                                                             "unfinished run there is resumed")
    dv.add_argument("--seed", type=int, default=0)
    dv.add_argument("--steps", type=positive_int, help="training steps (default 300)")
    dv.add_argument("--train-clips", type=positive_int, help="generated training clips (default 3000)")
    dv.add_argument("--test-clips", type=positive_int, help="generated held-out clips (default 300)")
    dv.add_argument("--keep-checkpoints", action="store_true", help="keep the training checkpoints")
    dv.add_argument("--force", action="store_true", help="run again over a finished video demo in --out")
    dv.set_defaults(func=cmd_demo_video)
    da = sub.add_parser("demo-adapt", help="adapt the demo model to real recorded speech with LoRA (after "
                                           "`onepeace demo`; a few minutes)")
    da.add_argument("--demo-model", default="runs/demo/model", help="the trained demo model (default runs/demo/model)")
    da.add_argument("--out", default="runs/demo-adapt", help="run directory (default runs/demo-adapt); resumable")
    da.add_argument("--seed", type=int, default=0)
    da.add_argument("--force", action="store_true", help="run again over a finished adapting demo in --out")
    da.set_defaults(func=_cmd_demo_adapt)


# ---- pretrain and finetune ---------------------------------------------------------------------

def _train_config(args: argparse.Namespace):
    """The recipe of ``pretrain`` / ``finetune`` with its overrides (``--output`` included)."""
    from .recipe import load_config

    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"train.output={json.dumps(args.output)}")
    if getattr(args, "init", None):
        overrides.append(f"model.init={json.dumps(args.init)}")
    return load_config(args.config, overrides)


def _report_run_skips(command: str, result: dict, eval_key: str) -> None:
    """End of a training run: skipped training samples, and skipped evaluation samples."""
    report_skipped(command, result.get("skipped", 0), what="training samples")
    evals = result.get(eval_key, {})
    if eval_key == "retrieval":  # one count for all pairs: they share the eval data
        n = max((m.get("skipped", 0) for m in evals.values()), default=0)
        report_skipped(command, n, what="evaluation samples")
    else:
        for source, m in evals.items():
            report_skipped(command, m.get("skipped", 0), what=f"samples of {source}")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .trainer import run

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
    from .trainer import run

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


def _add_pretrain_and_finetune(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("pretrain", help="pretrain (one process, or under torchrun --nproc-per-node N)")
    t.add_argument("config", help="a TOML recipe (see configs/)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-4")
    t.add_argument("--output", help="run directory (same as train.output=...)")
    t.add_argument("--from", dest="init", metavar="MODEL",
                   help="start from this trained model directory (same as model.init=...), e.g. to align a new "
                        "modality to it with configs/align_new_modality.toml")
    t.add_argument("--force", action="store_true", help=_TRAIN_FORCE)
    t.set_defaults(func=cmd_pretrain)

    f = sub.add_parser("finetune", help="fine-tune on a task: classify, retrieval, grounding, vqa, aqa, nlvr2, segmentation")
    f.add_argument("task", help="the task (see the fine-tuning table in docs/training.md)")
    f.add_argument("config", help="a TOML recipe (see configs/finetune_*.toml)")
    f.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-4")
    f.add_argument("--output", help="run directory (same as train.output=...)")
    f.add_argument("--force", action="store_true", help=_TRAIN_FORCE)
    f.set_defaults(func=cmd_finetune)


# ---- adapt -------------------------------------------------------------------------------------

_ADAPT_USAGE = ("onepeace adapt MODEL --pairs DATA --out DIR [options]\n"
                "       onepeace adapt merge BASE ADAPTER --out DIR [--force]")
_ADAPT_TRAINING = ("pairs", "val", "rank", "alpha", "targets", "branches", "steps", "epochs", "lr", "batch_size",
                   "accum", "bf16", "checkpointing", "seed", "save_every", "denoise")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def cmd_adapt(args: argparse.Namespace) -> int:
    if args.model == "merge":
        return _adapt_merge(args)
    if args.paths:
        raise ConfigError(f"unexpected argument {args.paths[0]!r}: `onepeace adapt MODEL --pairs DATA --out DIR` "
                          "takes one model (or `onepeace adapt merge BASE ADAPTER --out DIR`)")
    if not args.pairs or not args.out:
        raise ConfigError(f"give {'--pairs DATA' if not args.pairs else '--out DIR'}: `onepeace adapt MODEL --pairs "
                          "DATA --out DIR` (DATA: a JSONL manifest of pairs or a folder; DIR: the adapter to write)")
    from .adapt import run_adapt
    from .adapt.metrics import table

    options = {k: getattr(args, k) for k in _ADAPT_TRAINING if k != "pairs" and getattr(args, k) is not None}
    m = run_adapt(args.model, args.pairs, args.out, force=args.force, device=runtime(args), threads=args.threads,
                  **options)
    p = m["pairs"]
    print(f"onepeace adapt: {m['steps']} steps on {p['train']} pairs ({m['trainable_params']:,} LoRA parameters, "
          f"{m['seconds_per_step']:.2f} s per step)\n")
    print(table(m["before"], m["after"]))
    report_skipped("adapt", p["skipped"], what="pairs")
    print(f"\nadapter: {args.out} ({m['adapter_bytes'] / 1e6:.1f} MB); metrics: {os.path.join(args.out, 'metrics.json')}")
    print(f"use it:  onepeace embed --model {args.model} --adapter {args.out} ...")
    return 0


def _adapt_merge(args: argparse.Namespace) -> int:
    given = [f"--{k.replace('_', '-')}" for k in _ADAPT_TRAINING if getattr(args, k) not in (None, False)]
    if given:
        raise ConfigError(f"{given[0]} is an option of training an adapter, not of `onepeace adapt merge BASE "
                          "ADAPTER --out DIR`; drop it")
    if len(args.paths) != 2 or not args.out:
        raise ConfigError("usage: onepeace adapt merge BASE ADAPTER --out DIR [--force] (BASE: the model the "
                          "adapter was trained on; DIR: the merged model to write)")
    from onepeace.checkpoints.adapter import merge_adapter

    base, adapter = args.paths
    out = merge_adapter(base, adapter, args.out, force=args.force)
    print(f"merged {adapter} into {base}: {out} (a full model; no peft needed to run it)")
    return 0


def _add_adapt_training(a: argparse.ArgumentParser) -> None:
    a.add_argument("--pairs", metavar="DATA",
                   help="a JSONL manifest of pairs, e.g. {\"audio\": \"a.wav\", \"text\": \"a dog barks\"} (any two "
                        "modalities), or a folder: each media file's caption is its sidecar .txt of the same stem, "
                        "else its folder's name")
    a.add_argument("--val", help="held out and scored before and after: a fraction of the pairs (default 0.1, "
                                 "seeded) or a manifest / folder of pairs")
    a.add_argument("--rank", type=positive_int, help="LoRA rank (default 8)")
    a.add_argument("--alpha", type=_positive_float, help="LoRA alpha (default 2 x rank)")
    a.add_argument("--targets", help="comma-separated layers to adapt: ffn, proj, attention (default ffn,proj: only "
                                     "the branches trained change; attention is shared, so adapting it changes "
                                     "every modality's embeddings)")
    a.add_argument("--branches", help="comma-separated branches to adapt (default: the pairs' two modalities; e.g. "
                                      "--branches audio keeps the text side, and with it every other pairing, as "
                                      "it was)")
    a.add_argument("--steps", type=positive_int, help="optimizer steps (default: 10 epochs, at most 1000 steps)")
    a.add_argument("--epochs", type=_positive_float, help="epochs over the training pairs, instead of --steps")
    a.add_argument("--lr", type=_positive_float, help="peak learning rate (default 5e-4; 10%% warmup, then cosine)")
    a.add_argument("--batch-size", type=positive_int, help="pairs per step (default 32; the contrast's negatives)")
    a.add_argument("--accum", type=positive_int, help="gradient accumulation: micro-batches per step (default 1)")
    a.add_argument("--bf16", action="store_true", default=None,
                   help="base weights in bf16 with bf16 autocast (LoRA weights stay float32): half the memory")
    a.add_argument("--checkpointing", action="store_true", default=None,
                   help="activation checkpointing: recompute each layer in the backward pass (less memory, ~30%% "
                        "slower)")
    a.add_argument("--denoise", type=float, nargs="?", const=1.0, metavar="WEIGHT",
                   help="add the pretraining's intra-modal denoising contrast of the media side, with this weight "
                        "(1.0 when given alone; default off): a fresh light decoder trains along and is discarded")
    a.add_argument("--seed", type=int, help="seed of the split, the data order and the LoRA init (default 0)")
    a.add_argument("--save-every", type=positive_int, help="checkpoint every N steps (default 50); a killed run "
                                                           "resumes from the last one when rerun")


def _add_adapt(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("adapt", usage=_ADAPT_USAGE,
                       help="adapt a model to your own pairs with LoRA (cheap; resumable), or merge an adapter",
                       description="Train LoRA adapters (peft) of the branches of your pairs' two modalities with the "
                                   "pretraining's aligning contrast; every other weight, the logit scale included, "
                                   "stays frozen. The held-out pairs are scored before and after (R@1 both ways; "
                                   "zero-shot accuracy when the captions are labels). Missing or corrupt files are "
                                   "skipped and counted; the run stops once more than half of the pairs seen were "
                                   "bad (after 20). Rerun a killed run's command to resume it. See docs/adapting.md.")
    a.add_argument("model", metavar="MODEL", help="the model to adapt (a directory or a Hub id), or 'merge'")
    a.add_argument("paths", nargs="*", metavar="BASE ADAPTER", help="with merge: the base model and the adapter")
    a.add_argument("--out", metavar="DIR", help="the adapter directory to write (with merge: the merged model)")
    _add_adapt_training(a)
    a.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, or auto")
    a.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    a.add_argument("--force", action="store_true",
                   help="replace an existing adapter in DIR (or, with merge, model), and discard an unfinished run "
                        "with other options; default: refuse, and resume an unfinished run of the same command")
    a.set_defaults(func=cmd_adapt)


# ---- eval task ---------------------------------------------------------------------------------

def cmd_eval_task(args: argparse.Namespace) -> int:
    from .finetune.job import evaluate_task

    out = check_out(args.out, args.force)
    for source in args.data:
        if not os.path.isfile(source):
            raise InputError(f"task manifest {'is not a file' if os.path.exists(source) else 'not found'}: {source}")
    if args.labels and not os.path.isfile(args.labels):
        raise InputError(f"labels file {'is not a file' if os.path.exists(args.labels) else 'not found'}: "
                         f"{args.labels}")
    device = runtime(args)
    model = common.load_model(args.model, args.dtype, device, args.adapter)
    opts = {"multi_label": args.multi_label} if args.multi_label else {}
    if args.labels:
        opts["labels"] = args.labels

    def on_skip(source: str, skipped: list[str], total: int) -> None:
        report_skipped(f"eval task ({source})", len(skipped), skipped, total)

    metrics = evaluate_task(model, args.task, args.data, batch_size=args.batch_size, on_skip=on_skip,
                            progress=None, **opts)
    for m in metrics.values():  # per data source; each records the precision the model computed in
        if isinstance(m, dict):
            m["dtype"] = precision(model)
    text = json.dumps(rounded(metrics), indent=1)
    print(text)
    if out:
        write_text_atomic(out, text + "\n")
    return 0


def _add_eval_task(evs: argparse._SubParsersAction) -> None:
    et = evs.add_parser("task", help="a fine-tuned model's task metric on a task manifest")
    et.add_argument("task", help="classify, retrieval, grounding, vqa, aqa, nlvr2 or segmentation")
    et.add_argument("--model", required=True)
    et.add_argument("--data", action="append", required=True, help="task manifest (repeatable)")
    et.add_argument("--multi-label", action="store_true", help="classify: multi-label (mAP)")
    et.add_argument("--labels", help="vqa: the answer vocabulary file (default: the head's labels)")
    et.add_argument("--batch-size", type=positive_int, default=16)
    add_adapter_option(et)
    add_runtime_options(et)
    et.add_argument("--out", help="write the metrics as JSON")
    et.add_argument("--force", action="store_true", help="overwrite an existing --out file (default: refuse it, before any work)")
    add_max_pixels(et)
    et.set_defaults(func=cmd_eval_task)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training commands to ``onepeace`` (the entry point ``onepeace.commands: train``)."""
    _add_demo(sub)
    _add_try_and_demo_video(sub)
    _add_pretrain_and_finetune(sub)
    _add_adapt(sub)
    if "eval" in sub.choices:
        _add_eval_task(common.command_group(sub, "eval"))
