"""Every command a user runs: `--help` shows each option's default, and user mistakes are one line.

The mistakes go through the real entry points (`lit_avatar.cli.main`, as the `lit-avatar` script calls it,
and `python -m lit_avatar.demo|ablations`): one `error:` line on stderr, exit code 2, no traceback, and
nothing written.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.cli import BENCHMARKS
from data_tools.cli import COMMANDS as DATA_COMMANDS
from lit_avatar.cli import COMMANDS
from lit_avatar.errors import run_main

GROUPS = {"data": DATA_COMMANDS, "bench": BENCHMARKS}
LEAVES = [[name] for name in COMMANDS if name not in GROUPS] + [
    [group, name] for group, table in GROUPS.items() for name in table]
MODULES = {"demo": "lit_avatar.demo", "ablations": "lit_avatar.ablations",  # run as `python -m ...`
           "caption_study": "lit_avatar.caption_study"}
WITHOUT_DEFAULT = {"-h", "--help", "-c", "--config", "--options", "--print_config"}  # actions, not settings


def is_setting(flag: str, text: str) -> bool:
    """An option that sets a value (not help, an options file, or LightningCLI's per-class help)."""
    return flag not in WITHOUT_DEFAULT and not flag.endswith(".help") and "Path to a configuration file" not in text


def run(argv: list[str]) -> int:
    """Run a command line as its entry point does; return the exit code (SystemExit included)."""
    if argv[0] in MODULES:
        import importlib

        module = importlib.import_module(MODULES[argv[0]])
        with pytest.raises(SystemExit) as exit_info:
            run_main(lambda: module.main(argv[1:]))
        return int(exit_info.value.code or 0)
    from lit_avatar.cli import main

    try:
        return main(argv)
    except SystemExit as err:  # argparse's --help
        return int(err.code or 0)


def option_entries(help_text: str) -> dict[str, str]:
    """`--flag` -> its help text, from an argparse help page."""
    entries, current = {}, None
    for line in help_text.splitlines():
        match = re.match(r"\s{2}(-{1,2}[\w.-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current and line.startswith(" " * 6):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def all_options(help_text: str) -> set[str]:
    """Every option string of a help page, aliases included (`-c, --config CONFIG`)."""
    found = set()
    for line in help_text.splitlines():
        head = re.match(r"\s{2}(-\S.*?)(?:\s{2,}|$)", line)
        if head:
            found.update(re.findall(r"(?:^|,\s)(-{1,2}[\w.+-]+)", head.group(1)))
    return found


@pytest.mark.parametrize("command", LEAVES + [[m] for m in MODULES], ids=" ".join)
def test_help_shows_every_default(command, capsys):
    assert run([*command, "--help"]) == 0
    entries = option_entries(capsys.readouterr().out)
    settings = {flag: text for flag, text in entries.items() if is_setting(flag, text)}
    assert settings, f"no options found in {' '.join(command)} --help"
    missing = [flag for flag, text in settings.items() if "default:" not in text and "required" not in text]
    assert not missing, f"{' '.join(command)} --help shows no default for {missing}"


def test_group_help_lists_every_command(capsys):
    assert run(["--help"]) == 0
    top = capsys.readouterr().out
    assert all(re.search(rf"^\s+{name}\s", top, re.M) for name in COMMANDS)
    for group, table in GROUPS.items():
        assert run([group, "--help"]) == 0
        text = capsys.readouterr().out
        assert all(re.search(rf"^\s+{name}\s", text, re.M) for name in table), text


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A folder, a text file posing as media, a table YAML of the wrong shape and a missing path."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not an image, not audio, not a checkpoint\n")
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    (tmp_path / "typo.yaml").write_text("sede: 1\n")
    return {"dir": str(tmp_path / "folder"), "text": str(tmp_path / "notes.txt"), "list": str(tmp_path / "list.yaml"),
            "typo": str(tmp_path / "typo.yaml"), "missing": str(tmp_path / "missing.ckpt"),
            "out": str(tmp_path / "out"), "tmp": str(tmp_path)}


FIT = ["fit", "--config", "experiments/teacher/synthtalk_tiny.yaml"]
GEN = ["generate", "--ckpt", "{text}", "--audio", "{text}", "--ref", "{text}", "--out", "{tmp}/v.mp4"]
EVAL = ["eval", "--gen", "{dir}", "--out", "{out}/results.json"]
SERVE = ["serve", "--ckpt", "{missing}", "--ref", "{text}"]

# (command line, a fragment the one-line error must contain); three or more mistakes per command:
# a misspelt option (the closest valid one is named), a wrong type (option, value and expected type),
# a missing or wrong-kind file.
MISTAKES = [
    (FIT + ["--trainer.max_stpes=1"], "did you mean --trainer.max_steps?"),
    (FIT + ["--trainer.max_steps=x"], "--trainer.max_steps 'x': expected an integer"),
    (FIT + ["--data.init_args.batch_size=x"], "--data.init_args.batch_size 'x': expected an integer"),
    (["fit", "--config", "{missing}"], "missing.ckpt"),
    (["validate", "--config", "{list}"], "list.yaml"),
    (["data", "synth", "--out", "{out}", "--clipz", "4"], "did you mean --clips?"),
    (["data", "synth", "--out", "{out}", "--clips", "four"], "--clips 'four': expected an integer"),
    (["data", "synth", "--out", "{text}"], "notes.txt: is a file; expected a folder"),
    (["data", "build", "--src", "{dir}", "--out", "{out}", "--fsp", "25"], "did you mean --fps?"),
    (["data", "build", "--src", "{dir}", "--out", "{out}", "--size", "big"], "--size 'big': expected an integer"),
    (["data", "build", "--src", "{missing}", "--out", "{out}"], "missing.ckpt: not found"),
    (["data", "merge", "--otu", "{dir}"], "did you mean --out?"),
    (["data", "merge", "--out", "{missing}"], "missing.ckpt: not found; expected the folder the parts were built"),
    (["data", "merge", "--out", "{dir}"], "no build_plan.json; expected a folder that `data build --part I/N` wrote"),
    (["data", "export", "--shards", "{dir}/*.tar", "--out", "{out}", "--limt", "2"], "did you mean --limit?"),
    (["data", "export", "--shards", "{dir}/*.tar", "--out", "{out}", "--limit", "two"],
     "--limit 'two': expected an integer"),
    (["data", "export", "--shards", "{dir}/*.tar", "--out", "{out}"], "folder/*.tar"),
    (["data", "precompute", "--shards", "{text}", "--text-encodr", "{dir}"], "did you mean --text-encoder?"),
    (["data", "precompute", "--shards", "{text}", "--text-encoder", "{dir}", "--max-length", "long"],
     "--max-length 'long': expected an integer"),
    (["data", "precompute", "--shards", "{text}", "--text-encoder", "{dir}"],
     "--text-encoder {dir}: not a text encoder folder"),
    (GEN + ["--audoi", "a.wav"], "did you mean --audio?"),
    (GEN + ["--seed", "x"], "--seed 'x': expected an integer"),
    (GEN, "notes.txt"),
    (["generate", "--ckpt", "{missing}", "--audio", "{text}", "--ref", "{text}", "--out", "{tmp}/v.mp4"],
     "missing.ckpt: not found; expected a checkpoint"),
    (["generate", "--ckpt", "{text}", "--audio", "{dir}", "--ref", "{text}", "--out", "{tmp}/v.mp4"],
     "--audio {dir}: is a folder; expected an audio or video file"),
    (EVAL + ["--fsp", "25"], "did you mean --fps?"),
    (EVAL + ["--fps", "fast"], "--fps 'fast': expected a number"),
    (["eval", "--gen", "{missing}", "--out", "{out}/results.json"], "missing.ckpt"),
    (["table", "--config", "{list}", "--out", "{out}/t.md", "--runn"], "did you mean --run?"),
    (["table", "--config", "{list}", "--out", "{out}/t.md"], "list.yaml"),
    (["table", "--config", "{dir}", "--out", "{out}/t.md"], "folder: is a folder; expected a table YAML"),
    (["bench", "stream", "--latent-framez", "8"], "did you mean --latent-frames?"),
    (["bench", "stream", "--config", "{typo}"], "key 'sede': not an option; did you mean seed? (in --config"),
    (["bench", "stream", "--latent-frames", "many"], "--latent-frames 'many': expected an integer"),
    (["bench", "stream", "--psb-steps", "8,x"], "--psb-steps"),
    (["bench", "stream", "--out", "{dir}"], "folder: is a folder; expected a file name"),
    (["bench", "train", "--stpes", "2"], "did you mean --steps?"),
    (["bench", "train", "--steps", "two"], "--steps 'two': expected an integer"),
    (["bench", "train", "--out", "{dir}"], "folder: is a folder; expected a file name"),
    (["bench", "gpu", "--dryrun"], "did you mean --dry-run?"),
    (["bench", "gpu", "--stream-seconds", "long"], "--stream-seconds 'long': expected a number"),
    (["bench", "gpu", "--rows", "{missing}"], "missing.ckpt: not found; expected a bench gpu JSON"),
    (["bench", "gpu", "--rows", "{list}"], "list.yaml: cannot read bench gpu JSON"),
    (["bench", "serve", "--sesions", "2"], "did you mean --sessions?"),
    (["bench", "serve", "--seconds", "long"], "--seconds 'long': expected a number"),
    (["bench", "serve", "--sessions", "1,x"], "--sessions '1,x': expected integers >= 1"),
    (["bench", "serve", "--out", "{dir}"], "folder: is a folder; expected a file name"),
    (["bench", "prompt", "--evrey", "2"], "did you mean --every?"),
    (["bench", "prompt", "--every", "1"], "--every 1 --blocks 60: expected every >= 2 and blocks >= 2 * every"),
    (["bench", "prompt", "--blocks", "many"], "--blocks 'many': expected an integer"),
    (["bench", "prompt", "--out", "{dir}"], "folder: is a folder; expected a file name"),
    (["bench", "build", "--sourses", "2"], "did you mean --sources?"),
    (["bench", "build", "--sources", "two"], "--sources 'two': expected an integer"),
    (["bench", "build", "--keep", "{text}"], "notes.txt: is a file; expected a folder"),
    (SERVE + ["--prot", "0"], "did you mean --port?"),
    (SERVE + ["--port", "http"], "--port 'http': expected an integer"),
    (SERVE, "missing.ckpt: not found; expected a causal"),
    (["export", "--ckpt", "{missing}", "--outt", "{out}"], "did you mean --out?"),
    (["export", "--ckpt", "{missing}", "--out", "{out}"], "missing.ckpt: not found; expected a checkpoint"),
    (["export", "--ckpt", "{text}", "--out", "{out}"], "notes.txt: not a readable torch checkpoint"),
    (["export", "--ckpt", "{dir}", "--out", "{out}"], "folder: is a folder without generator.json"),
    (["demo", "--out", "{out}", "--teacher-stepz", "5"], "did you mean --teacher-steps?"),
    (["demo", "--out", "{out}", "--teacher-steps", "many"], "--teacher-steps 'many': expected an integer"),
    (["demo", "--out", "{text}"], "notes.txt: is a file; expected a folder"),
    (["ablations", "--out", "{out}", "--seedz", "0"], "did you mean --seeds?"),
    (["ablations", "--out", "{out}", "--steps", "many"], "--steps 'many': expected an integer"),
    (["ablations", "--out", "{out}", "--table", "{missing}"], "missing.ckpt"),
    (["caption_study", "--out", "{out}", "--stepz", "5"], "did you mean --steps?"),
    (["caption_study", "--out", "{out}", "--steps", "many"], "--steps 'many': expected an integer"),
    (["caption_study", "--out", "{text}"], "notes.txt: is a file; expected a folder"),
    (["caption_study", "--out", "{out}", "--eval-clips", "20"], "--eval-clips 20: expected at most --val-identities"),
    (["caption_study", "--out", "{out}", "--seeds", "0,x"], "--seeds"),
]


def _ids(case) -> str:
    return " ".join(case[0][:3] if case[0][0] in ("fit", "validate") else case[0]).replace("{", "").replace("}", "")


@pytest.mark.parametrize("argv, fragment", MISTAKES, ids=[_ids(c) for c in MISTAKES])
def test_mistakes_are_one_line(argv, fragment, files, capsys):
    argv = [a.format(**files) for a in argv]
    before = sorted(p for p in Path(files["tmp"]).rglob("*"))
    code = run(argv)
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert code == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert fragment.format(**files) in lines[0], lines[0]
    assert sorted(p for p in Path(files["tmp"]).rglob("*")) == before, "a mistake left files behind"


def test_every_command_has_three_mistakes():
    counted = {}
    for argv, _ in MISTAKES:
        key = " ".join(argv[:2]) if argv[0] in GROUPS else argv[0]
        counted[key] = counted.get(key, 0) + 1
    commands = {" ".join(c) for c in LEAVES if c[0] not in ("validate", "test", "predict")} | set(MODULES)
    assert {c: counted.get(c, 0) for c in commands if counted.get(c, 0) < 3} == {}


def test_old_spellings_and_options_files_agree(tmp_path, capsys):
    """`--psb-steps` (today's spelling), `--psb_steps` and `psb_steps` in a --config file: the same settings."""
    options = tmp_path / "stream.yaml"
    options.write_text("psb_steps: '8,6'\nlatent_frames: 12\n")
    assert run(["bench", "stream", "--config", str(options), "--print_config"]) == 0
    from_file = capsys.readouterr().out
    assert run(["bench", "stream", "--psb-steps", "8,6", "--latent-frames", "12", "--print_config"]) == 0
    assert capsys.readouterr().out == from_file
    assert run(["bench", "stream", "--psb_steps=8,6", "--latent_frames", "12", "--print_config"]) == 0
    assert capsys.readouterr().out == from_file
    assert "psb_steps: 8,6" in from_file.replace("'", "")


ROOT = Path(__file__).resolve().parents[1]
# README.md is the front door, docs/*.md the pages it links
USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_command_lines(path: Path) -> list[tuple[list[str], set[str]]]:
    """(command words, options shown) of every `lit-avatar ...` / `python -m lit_avatar.X ...` in a markdown
    file, continuation lines included (those that start with spaces and `[` or `--`)."""
    found, current = [], None
    command = re.compile(r"(?:lit-avatar|python -m lit_avatar\.(demo|ablations|caption_study))\s+([a-z|]+(?: [a-z]+)?)")
    for line in path.read_text().splitlines():
        for start in command.finditer(line):
            words = [start.group(1)] if start.group(1) else start.group(2).split("|")[0].split()
            if not start.group(1) and words[0] in GROUPS and len(words) == 1:
                continue
            if not start.group(1) and words[0] not in COMMANDS:
                continue
            words = words[:2] if words[0] in GROUPS else words[:1]
            current = (words, set(re.findall(r"(--[a-z][\w.-]*)", line[start.start():])))
            found.append(current)
        if current and re.match(r"\s+(\[|--)", line) and not line.lstrip().startswith(("lit-avatar", "python")):
            current[1].update(re.findall(r"(--[a-z][\w.-]*)", line))
        elif not re.search(r"lit-avatar|python -m lit_avatar", line):
            current = None
    return found


def test_every_option_the_readme_shows_is_accepted(capsys):
    """What README.md and the docs/ pages tell users to type still parses: each command exists and takes each
    option shown."""
    lines = [(path, line) for path in USER_DOCS for line in readme_command_lines(path)]
    assert len(lines) >= 15 and {path.name for path, _ in lines} >= {"README.md", "commands.md", "recipes.md"}
    helps: dict[str, set[str]] = {}
    for path, (words, options) in lines:
        key = " ".join(words)
        if key not in helps:
            assert run([*words, "--help"]) == 0, key
            helps[key] = {o.replace("_", "-") for o in all_options(capsys.readouterr().out)}
        shown = {o.replace("_", "-") for o in options if o not in ("--key",)}
        # LightningCLI options are nested (--trainer.devices, --model.init_args.x): their top key must exist
        unknown = {o for o in shown if o not in helps[key] and o.split(".")[0] not in helps[key]}
        assert not unknown, f"{path.name} shows `{key}` with options it does not accept: {sorted(unknown)}"


def test_help_states_a_default_once():
    """An option whose help says its own default (e.g. the prompt cache's env variable) does not also print
    jsonargparse's '(default: null)'; options without one still show their default."""
    from lit_avatar.inference.generate_cli import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "(default: $LIT_AVATAR_PROMPT_CACHE or ~/.cache/lit_avatar/prompts)" in text
    assert "~/.cache/lit_avatar/prompts) (default: null)" not in text
    assert "(type: float, default: 1.0)" in text  # --text-guidance keeps jsonargparse's default
