"""One pretraining step's loss for a (text, other-modality) pair: the stage recipes (the official
``ImageTextPretrainLossCriterion`` / ``AudioTextPretrainLossCriterion``, one_peace/criterions/ of
github.com/OFA-Sys/ONE-PEACE).

Stage 1 (image-text): L = ITC + 0.5 DCL_text + 1.0 DCL_image + 0.5 DCL_vl-text + 0.5 DCL_vl-image.
Stage 2 (audio-text): L = ATC + 1.0 DCL_audio + 0.5 DCL_al-text + 0.5 DCL_al-audio, with the
unimodal audio teacher taken from the joint teacher (official quirk, ``teacher_from_joint``).
Nothing here names a modality: ``other`` is any registered one, and ``align_with`` adds aligning
contrasts between ``other`` and further modalities in the batch (a video and its soundtrack).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from onepeace.errors import InputError
from onepeace.modalities.masking import keep_to_positions
from onepeace_train.pretrain.losses import contrastive_loss, denoising_loss


@dataclass
class ObjectiveConfig:
    other: str = "image"  # the modality aligned with text
    weights: dict[str, float] = field(default_factory=lambda: {
        "align": 1.0, "dcl_text": 0.5, "dcl_other": 1.0, "dcl_joint_text": 0.5, "dcl_joint_other": 0.5})
    mask: dict[str, float] = field(default_factory=lambda: {
        "text": 0.15, "other": 0.75, "joint_text": 0.4, "joint_other": 0.6875})
    # more aligning contrasts of `other`, with the weight of each: {"audio": 1.0} aligns a clip
    # with its soundtrack (every batch must then carry that modality, e.g. a video's companion audio)
    align_with: dict[str, float] = field(default_factory=dict)
    complementary: bool = True  # joint kept tokens come from those the unimodal mask hid
    teacher_from_joint: bool = False  # unimodal `other` DCL teacher = joint teacher's slice
    gather_with_grad: bool = True
    tau: float = 0.4
    smoothing: float = 0.1


def compute_losses(pm: nn.Module, batch: dict, cfg: ObjectiveConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Weighted total under "loss", and each term (unweighted) under its name. ``pm``: the
    :class:`~onepeace_train.pretrain.model.PretrainModel` (which calls this from its ``forward``)."""
    o, w = cfg.other, cfg.weights
    text, other = batch["text"], batch[o]
    ad = pm.model.adapters
    t_args, o_args = pm._args("text", text), pm._args(o, other)
    t_valid, o_valid = ad["text"].valid_mask(*t_args), ad[o].valid_mask(*o_args)
    lengths = {"text": t_valid.shape[1], o: o_valid.shape[1]}
    out: dict[str, torch.Tensor] = {}

    t_out, t_emb = pm.unmasked(text=text)
    o_out, o_emb = pm.unmasked(**{o: other})
    if w.get("align", 0):
        out["align"] = contrastive_loss(o_emb[o], t_emb["text"], pm.model.logit_scale, cfg.gather_with_grad)
    weights = dict(w)
    for m, weight in cfg.align_with.items():
        if m not in batch:
            raise InputError(f"objective.align_with aligns {o} with {m}, but the batch has no {m} "
                             f"(it has {sorted(batch)}): give records with a {m} field or companion")
        _, m_emb = pm.unmasked(**{m: batch[m]})
        out[f"align_{m}"] = contrastive_loss(o_emb[o], m_emb[m], pm.model.logit_scale, cfg.gather_with_grad)
        weights[f"align_{m}"] = weight

    need_joint_teacher = w.get("dcl_joint_text", 0) or w.get("dcl_joint_other", 0) or cfg.teacher_from_joint
    joint_teacher = None
    if need_joint_teacher:
        with torch.no_grad():
            joint_teacher = pm.model.encode(text=text, **{o: other}).features

    uni_keep = {}
    if w.get("dcl_text", 0):
        uni_keep["text"] = ad["text"].sample_keep(t_args, cfg.mask["text"], gen)
        student = pm.masked({"text": text}, {"text": keep_to_positions(uni_keep["text"])}, lengths)["text"]
        out["dcl_text"] = denoising_loss(student, t_out.features["text"], ~uni_keep["text"] & t_valid, t_valid,
                                         cfg.tau, cfg.smoothing)
    if w.get("dcl_other", 0):
        uni_keep[o] = ad[o].sample_keep(o_args, cfg.mask["other"], gen)
        student = pm.masked({o: other}, {o: keep_to_positions(uni_keep[o])}, lengths)[o]
        teacher = joint_teacher[o] if cfg.teacher_from_joint else o_out.features[o]
        out["dcl_other"] = denoising_loss(student, teacher, ~uni_keep[o] & o_valid, o_valid, cfg.tau, cfg.smoothing)
    if w.get("dcl_joint_text", 0) or w.get("dcl_joint_other", 0):
        comp = (lambda m: uni_keep.get(m)) if cfg.complementary else (lambda m: None)
        jk_t = ad["text"].sample_keep(t_args, cfg.mask["joint_text"], gen, comp("text"))
        jk_o = ad[o].sample_keep(o_args, cfg.mask["joint_other"], gen, comp(o))
        students = pm.masked({"text": text, o: other},
                             {"text": keep_to_positions(jk_t), o: keep_to_positions(jk_o)}, lengths)
        if w.get("dcl_joint_text", 0):
            out["dcl_joint_text"] = denoising_loss(students["text"], joint_teacher["text"], ~jk_t & t_valid,
                                                   t_valid, cfg.tau, cfg.smoothing)
        if w.get("dcl_joint_other", 0):
            out["dcl_joint_other"] = denoising_loss(students[o], joint_teacher[o], ~jk_o & o_valid, o_valid,
                                                    cfg.tau, cfg.smoothing)
    out["loss"] = sum(weights.get(k, 0.0) * v for k, v in out.items())
    return out
