"""`python -m lit_avatar.caption_study`: does a teacher trained with SynthTalk captions respond to them?

1. writes a SynthTalk set with captions and their text encoder (`data synth`), and a copy whose captions are
   permuted across clips (the control: the same videos, captions that carry no information about them);
2. trains the same teacher recipe (experiments/teacher/synthtalk_captions.yaml) on each: same seed, same steps,
   same data order, only the captions differ;
3. samples both teachers on clips of held-out identities, each clip three times with the same noise, audio and
   reference: with its true caption, and with captions naming another skin or background colour (the name of
   the training captions farthest from the clip's colour); once with the reference image, once without it
   (the reference fixes the identity's colours, so without it the caption is the only source of them);
4. scores each sample with eval.caption_score: the fraction of the way the region's mean colour moved from the
   clip's true colour toward the colour the other caption names (the mean colour of that region over the
   training identities whose captions use the name); the caption's effect per clip is score(other caption) -
   score(true caption); means with 95% intervals over clips x seeds, and the paired difference captions -
   shuffled per clip and seed -> <out>/results.json and the table <out>/caption_study.md.
"""
from __future__ import annotations

import json
import shlex
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from lit_avatar.command import CommandParser, Namespace, int_list

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "teacher" / "synthtalk_captions.yaml"
SCORED = ("skin", "background")  # hair is 0-30 px at 32 px: too few to measure
TEACHERS = ("captions", "shuffled")
MIN_NAME_COUNT = 3  # another caption names only colours at least this many training identities have


def _parser() -> CommandParser:
    p = CommandParser(prog="python -m lit_avatar.caption_study", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/captions", help="output root (data, teachers, results)")
    p.add_argument("--steps", type=int, default=400, help="teacher optimizer steps (each teacher)")
    p.add_argument("--batch", type=int, default=8, help="clips per teacher step")
    p.add_argument("--frames", type=int, default=4, help="video frames per training and sampled clip")
    p.add_argument("--clips", type=int, default=320, help="SynthTalk clips (train + held out)")
    p.add_argument("--identities", type=int, default=None, help="SynthTalk identities (default: one per clip)")
    p.add_argument("--val-identities", type=int, default=16, help="identities held out for scoring")
    p.add_argument("--eval-clips", type=int, default=12, help="held-out clips sampled per teacher and seed")
    p.add_argument("--seeds", default="0,1", help="comma-separated sampling-noise seeds")
    p.add_argument("--sample-steps", type=int, default=10, help="Euler steps per sample")
    p.add_argument("--text-guidance", default="3,6", help="comma-separated text CFG scales (each sampled)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data set and of both teachers' training")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def _validate(args: Namespace) -> None:
    from lit_avatar.errors import UserError

    for name in ("steps", "batch", "frames", "clips", "val_identities", "eval_clips", "sample_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    if args.eval_clips > args.val_identities:
        raise UserError(f"--eval-clips {args.eval_clips}: expected at most --val-identities ({args.val_identities}):"
                        " one clip per held-out identity")
    int_list(args.seeds, "--seeds", minimum=0)
    guidance_scales(args.text_guidance)


def guidance_scales(text: str) -> list[float]:
    """`--text-guidance 3,6` as floats >= 1, or a one-line UserError."""
    from lit_avatar.errors import UserError

    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1.0:
        raise UserError(f"--text-guidance {text!r}: expected scales >= 1 separated by commas, e.g. 3,6")
    return values


def make_data(folder: Path, args: Namespace) -> dict:
    """The captioned SynthTalk set and its text encoder, written once (reused with the same settings)."""
    from data_tools.synth import TEXT_ENCODER, write_synthtalk
    from data_tools.synth_captions import write_synthtalk_text_encoder

    wanted = {"clips": args.clips, "identities": args.identities or args.clips, "seconds": 1.0, "seed": args.seed,
              "val_identities": args.val_identities}
    manifest = folder / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("study_args") == wanted:
        return json.loads(manifest.read_text())
    print(f"writing SynthTalk with captions: {args.clips} clips of 1 s", flush=True)
    info = write_synthtalk(folder, clips=args.clips, seconds=1.0, shards=4, size=32, seed=args.seed,
                           val_identities=args.val_identities, identities=wanted["identities"])
    write_synthtalk_text_encoder(folder / TEXT_ENCODER)
    info.update(text_encoder=TEXT_ENCODER, study_args=wanted)
    manifest.write_text(json.dumps(info, indent=1))
    return info


def shuffle_captions(source: Path, target: Path, seed: int) -> None:
    """Copy the shards of `source` to `target` with the `txt` members permuted across the clips of each split
    (every other member byte-identical), so the captions say nothing about their clips."""
    from data_tools.shards import ShardFile

    target.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        shards = sorted(source.glob(f"{split}-*.tar"))
        samples = [_read_samples(path) for path in shards]
        keys = [key for shard in samples for key in shard]
        captions = [shard[key]["txt"] for shard in samples for key in shard]
        order = np.random.default_rng([seed, 7]).permutation(len(captions))
        permuted = dict(zip(keys, (captions[i] for i in order)))
        for path, shard in zip(shards, samples):
            with ShardFile(target / path.name) as writer:
                for key, members in shard.items():
                    writer.write({"__key__": key, **members, "txt": permuted[key]})
    (target / "manifest.json").write_text((source / "manifest.json").read_text())


def _read_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as handle:
        for member in handle.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = handle.extractfile(member).read()
    return samples


def rest_colours(identity, size: int = 32) -> dict[str, np.ndarray]:
    """Each scored region's mean colour as the renderer paints the identity at rest (the region masks)."""
    from data_tools.synth_captions import region_masks
    from data_tools.synth_face import render
    from eval.caption_score import region_colour

    frame = render(identity, size, np.zeros((1, 2)), np.zeros(1), np.ones(1))[0]
    masks = region_masks(identity, size)
    return {region: region_colour(frame, masks[region]) for region in SCORED}


def name_colours(seed: int, identities: range, size: int = 32) -> dict[str, dict[str, tuple[np.ndarray, int]]]:
    """What each colour word means in the training captions: per scored region and name, the mean colour of
    that region over the training identities whose captions use the name, and how many they are."""
    from data_tools.synth import identity_traits
    from data_tools.synth_captions import caption_words

    seen: dict[str, dict[str, list[np.ndarray]]] = {region: {} for region in SCORED}
    for index in identities:
        identity = identity_traits(seed, index, size)
        words, colours = caption_words(identity, np.zeros(1)), rest_colours(identity, size)
        for region in SCORED:
            seen[region].setdefault(words[region], []).append(colours[region])
    return {region: {name: (np.mean(c, axis=0), len(c)) for name, c in names.items()} for region, names in seen.items()}


def other_name(region: str, true_name: str, true_colour: np.ndarray, meanings: dict) -> str:
    """The name (of at least MIN_NAME_COUNT training identities) whose colour is farthest from `true_colour`."""
    names = [n for n, (_, count) in meanings[region].items() if count >= MIN_NAME_COUNT and n != true_name]
    return max(names, key=lambda n: float(np.sum((meanings[region][n][0] - true_colour) ** 2)))


def eval_clips(args: Namespace, identities: int, meanings: dict) -> list[dict]:
    """Held-out clips (fixed clip indices: both teachers see the same ones), each with its true caption and,
    per scored region, a caption naming another colour, its target colour, the true colour and the mask."""
    from data_tools.synth import identity_traits, make_clip
    from data_tools.synth_captions import caption_words, format_caption, region_masks
    from eval.caption_score import region_colour

    held_out = range(identities - args.val_identities, identities)
    clips = []
    for i in range(args.eval_clips):
        clip = make_clip(args.seed, 3_000_000 + i, held_out[i], args.frames / 25.0, 32)
        identity = identity_traits(args.seed, held_out[i], 32)
        words, masks = caption_words(identity, clip.opening), region_masks(identity, 32)
        item = {"clip": clip, "captions": [format_caption(words)], "regions": {}}
        for region in SCORED:
            true = region_colour(clip.frames, masks[region])
            name = other_name(region, words[region], true, meanings)
            item["captions"].append(format_caption({**words, region: name}))
            item["regions"][region] = {"mask": masks[region], "true": true, "true_name": words[region],
                                       "other_name": name, "named": meanings[region][name][0]}
        clips.append(item)
    return clips


def sample_captions(bundle, sampler, encoder, clips: list[dict], seed: int, with_ref: bool) -> np.ndarray:
    """uint8 frames [clips, captions, T, H, W, 3]: each clip under each of its captions, with the same noise,
    audio and reference (zeros, the null reference, when `with_ref` is False)."""
    import dataclasses

    import torch

    from lit_avatar.data.frames import to_uint8_frames
    from lit_avatar.modules.conditions import clip_inputs

    per_clip = len(clips[0]["captions"])

    def stack(arrays):  # uint8 [N, ...] -> float in [-1, 1], each clip repeated once per caption
        return torch.from_numpy(np.stack(arrays)).float().div(127.5).sub(1).repeat_interleave(per_clip, 0)

    batch = {"video": stack([c["clip"].frames for c in clips]).permute(0, 4, 1, 2, 3),
             "ref": stack([c["clip"].ref for c in clips]).permute(0, 3, 1, 2),
             "audio": torch.from_numpy(np.stack([c["clip"].audio for c in clips])).repeat_interleave(per_clip, 0)}
    with torch.inference_mode():
        x0, conds = clip_inputs(batch, bundle.vae, bundle.audio_encoder)
        text = encoder([caption for c in clips for caption in c["captions"]])
        ref = conds.ref if with_ref else torch.zeros_like(conds.ref)
        conds = dataclasses.replace(conds, ref=ref, text=text)
        noise = torch.randn((len(clips), *x0.shape[1:]), generator=torch.Generator().manual_seed(seed))
        latents = sampler.latents(bundle.model, conds, noise.repeat_interleave(per_clip, 0))
        frames = to_uint8_frames(bundle.vae.decode(latents).float().clamp(-1, 1))
    return frames.reshape(len(clips), per_clip, *frames.shape[1:])


def score_samples(frames: np.ndarray, clips: list[dict], **labels) -> list[dict]:
    """One record per clip and scored region: the score with the true and with the other caption, their
    difference (the caption's effect), the names and `labels` (teacher, seed, reference)."""
    from eval.caption_score import caption_score

    records = []
    for i, item in enumerate(clips):
        for j, (region, info) in enumerate(item["regions"].items()):
            true_score = caption_score(frames[i, 0], info["mask"], info["true"], info["named"])
            other_score = caption_score(frames[i, j + 1], info["mask"], info["true"], info["named"])
            records.append({**labels, "clip": i, "region": region, "true_name": info["true_name"],
                            "other_name": info["other_name"], "score_true_caption": true_score,
                            "score_other_caption": other_score, "response": other_score - true_score})
    return records


def summarize(records: list[dict]) -> list[dict]:
    """Per text guidance scale, reference setting and region: each teacher's mean scores and response with 95%
    intervals over clips x seeds, and the paired difference of responses captions - shuffled."""
    from eval.stats import mean_ci

    rows = []
    cells = [(g, ref, region) for g in sorted({r["text_guidance"] for r in records}) for ref in (False, True)
             for region in SCORED]
    for guidance, with_ref, region in cells:
        chosen = [r for r in records if r["reference"] == with_ref and r["region"] == region
                  and r["text_guidance"] == guidance]
        by_teacher = {t: {(r["seed"], r["clip"]): r for r in chosen if r["teacher"] == t} for t in TEACHERS}
        row = {"text_guidance": guidance, "reference": with_ref, "region": region}
        for teacher, items in by_teacher.items():
            values = list(items.values())
            for key in ("score_true_caption", "score_other_caption", "response"):
                interval = mean_ci([v[key] for v in values])
                row[f"{teacher}_{key}"] = interval.mean
                row[f"{teacher}_{key}_ci95"] = [interval.low, interval.high]
            row[f"{teacher}_n"] = len(values)
        pairs = sorted(set(by_teacher["captions"]) & set(by_teacher["shuffled"]))
        diff = mean_ci([by_teacher["captions"][k]["response"] - by_teacher["shuffled"][k]["response"]
                        for k in pairs])
        row.update(difference=diff.mean, difference_ci95=[diff.low, diff.high], pairs=len(pairs))
        rows.append(row)
    return rows


def table(rows: list[dict], command: str) -> str:
    """The markdown table of `summarize`'s rows."""
    def cell(row, key):
        low, high = row[f"{key}_ci95"]
        return f"{row[key]:+.3f} [{low:+.3f}, {high:+.3f}]"

    lines = ["| text guidance | reference | region | response, captions teacher | response, shuffled-caption control | "
             "captions - control (paired) | score true / other caption (captions teacher) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['text_guidance']:g} | {'with' if row['reference'] else 'without'} | {row['region']} | "
                     f"{cell(row, 'captions_response')} | {cell(row, 'shuffled_response')} | "
                     f"{cell(row, 'difference')} | {row['captions_score_true_caption']:+.3f} / "
                     f"{row['captions_score_other_caption']:+.3f} |")
    note = (f"\nResponse: score(other caption) - score(true caption) per held-out clip and seed (eval.caption_score: "
            f"0 = the clip's true colour, 1 = the colour the other caption names); mean [95% CI] over "
            f"n = {rows[0]['captions_n']} clip x seed pairs.\n\n`{command}`\n")
    return "\n".join(lines) + "\n" + note


def teacher_stage(name: str, args: Namespace, text_encoder: Path, cache: Path):
    """The captions teacher recipe at the study's size, its text encoder the data set's."""
    from lit_avatar.pipeline import Stage

    key = "--model.init_args.text_encoder.init_args."
    return Stage(name, [str(CONFIG)], args.steps, [
        f"--data.init_args.batch_size={args.batch}", f"--data.init_args.clip_frames={args.frames}",
        f"{key}path={text_encoder}", f"{key}cache_dir={cache}"])


def train_teachers(args: Namespace, out: Path) -> dict[str, Path]:
    """Data (with captions, and the shuffled copy) and the two teachers; each reused when already there."""
    from lit_avatar import pipeline
    from lit_avatar.data.atomic import write_json_atomic

    data, shuffled = out / "data", out / "data_shuffled"
    info = make_data(data, args)
    stamp = shuffled / "shuffled_from.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != info["study_args"]:
        shuffle_captions(data, shuffled, args.seed)
        write_json_atomic(stamp, info["study_args"])
    ckpts = {}
    for name, folder in zip(TEACHERS, (data, shuffled)):
        print(f"== teacher on {'true' if name == 'captions' else 'shuffled'} captions: {args.steps} steps of "
              f"{args.batch} clips x {args.frames} frames", flush=True)
        stage = teacher_stage(name, args, data / info["text_encoder"], out / "prompt_cache")
        ckpts[name], _ = pipeline.fit_stage(stage, folder, out / "logs", args.seed, quiet=True,
                                            extra_callbacks=["lit_avatar.modules.callbacks.LossHistory"])
    return ckpts


def study_sampler(ckpt: Path, args: Namespace, text_guidance: float):
    """The teacher's own sampler (its shift) at --sample-steps, with audio and reference guidance off (colours
    are not theirs to steer) and text guidance at `text_guidance`."""
    import dataclasses

    from lit_avatar.pipeline import teacher_sampler

    base = teacher_sampler(ckpt, args.sample_steps)
    return dataclasses.replace(base, audio_guidance=1.0, ref_guidance=1.0, text_guidance=text_guidance)


def evaluate(args: Namespace, out: Path, ckpts: dict[str, Path]) -> list[dict]:
    """Sample both teachers on the held-out clips with true and other captions, with and without the
    reference, for every seed; one score record per clip, region, seed, reference setting and teacher."""
    from lit_avatar.checkpoint import load_generator
    from lit_avatar.prompts import PromptEncoder

    info = json.loads((out / "data" / "manifest.json").read_text())
    count = int(info["identities"])
    meanings = name_colours(args.seed, range(count - args.val_identities))
    clips = eval_clips(args, count, meanings)
    encoder = PromptEncoder(str(out / "data" / info["text_encoder"]), max_length=16,
                            cache_dir=str(out / "prompt_cache"))
    records = []
    for teacher, ckpt in ckpts.items():
        bundle = load_generator(ckpt)
        settings = [(scale, seed, with_ref) for scale in guidance_scales(args.text_guidance)
                    for seed in int_list(args.seeds, "--seeds", minimum=0) for with_ref in (False, True)]
        for scale, seed, with_ref in settings:
            sampler = study_sampler(ckpt, args, scale)
            frames = sample_captions(bundle, sampler, bundle.text_encoder or encoder, clips, seed, with_ref)
            records += score_samples(frames, clips, teacher=teacher, seed=seed, reference=with_ref,
                                     text_guidance=scale)
        print(f"   sampled and scored the {teacher} teacher", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    from lit_avatar.data.atomic import write_json_atomic
    from lit_avatar.errors import output_folder
    from lit_avatar.runs import open_run_folder

    args = _parser().parse(argv)
    output_folder(args.out, "--out")
    _validate(args)
    out = open_run_folder(args.out, args.threads, "caption_study.log")
    command = "python -m lit_avatar.caption_study " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    ckpts = train_teachers(args, out)
    records = evaluate(args, out, ckpts)
    rows = summarize(records)
    markdown = table(rows, command)
    write_json_atomic(out / "results.json", {"command": command, "rows": rows, "records": records,
                                             "seconds": round(time.perf_counter() - started, 1)})
    (out / "caption_study.md").write_text(markdown)
    print(markdown)
    print(f"results: {out / 'results.json'}, table: {out / 'caption_study.md'}")
    return 0


if __name__ == "__main__":
    from lit_avatar.errors import run_main

    run_main(main)
