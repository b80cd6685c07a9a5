"""The parser every `lit-avatar` command is built on (jsonargparse, as `fit` is through LightningCLI).

`CommandParser` adds `--config FILE` (YAML/JSON whose keys are the option names with underscores) and
`--print_config`, shows every option's type and default in `--help`, and turns every parse mistake into
one `UserError` line that names the option, the value and what was expected (a misspelt option gets the
closest valid one), which `lit_avatar.cli` prints with exit code 2.
"""
from __future__ import annotations

import difflib
import importlib
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

try:
    from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, DefaultHelpFormatter, Namespace
except ImportError:  # the bare GPU machine (bench/gpu.sh): the same flags, without --config files
    from argparse import ArgumentDefaultsHelpFormatter as DefaultHelpFormatter
    from argparse import ArgumentError, ArgumentParser, Namespace

    ActionConfigFile = None

from lit_avatar.errors import UserError

__all__ = ["CommandParser", "Namespace", "device_option", "dispatch", "int_list", "one_line", "option_strings",
           "size_option"]

_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}


class _HelpFormatter(DefaultHelpFormatter):
    """Types and defaults after each option; the description keeps its paragraphs and indented blocks."""

    def _get_help_string(self, action) -> str:
        text = super()._get_help_string(action)
        if action.default is None and "(default: " in (action.help or ""):  # the help says it better than "null"
            text = text.replace(" (default: %(default)s)", "").replace(", default: %(default)s)", ")")
        return text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            if any(line.startswith(" ") for line in paragraph.splitlines()):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                                subsequent_indent=indent))
        return "\n\n".join(paragraphs)


class CommandParser(ArgumentParser):
    """A jsonargparse parser whose mistakes are one line (UserError), with `--config` and typed help."""

    def __init__(self, prog: str, description: str | None = None, options_file: str = "--config",
                 **kwargs: Any) -> None:
        """`options_file`: the flag of the options file (`lit-avatar table` has its own `--config`)."""
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(prog=prog, description=description, exit_on_error=False, **kwargs)
        self.options_file = options_file
        if ActionConfigFile is None:  # said, not hidden: an options file needs jsonargparse
            self.add_argument(options_file, dest="config", default=None,
                              help="YAML/JSON file of options (needs jsonargparse, not installed here)")
            return
        self.add_argument(options_file, action=ActionConfigFile, dest="config",
                          help="YAML/JSON file of options (keys: option names with underscores); later "
                          "options override it")

    if ActionConfigFile is None:
        def error(self, message: str, *args: Any, **kwargs: Any) -> None:
            """Plain argparse prints usage and exits here even with exit_on_error=False: raise, to be one line."""
            raise ArgumentError(None, message)

    def parse(self, argv: Sequence[str] | None = None) -> Namespace:
        """Parse `argv` (default: the command line); `--help`/`--print_config` exit 0, a mistake raises a
        one-line UserError."""
        argv = list(sys.argv[1:] if argv is None else argv)
        known = option_strings(self)
        argv = [_dashed(token, known) for token in argv]
        try:
            args = self.parse_args(argv)
        except ArgumentError as err:
            raise UserError(one_line(err, self.prog, known, argv, self.options_file)) from None
        if ActionConfigFile is None and args.config is not None:
            raise UserError(f"{args.config}: options files need jsonargparse (pip install jsonargparse); "
                            "give the options as flags")
        return args


def option_strings(parser: ArgumentParser) -> dict[str, str]:
    """Every long option a parser (and its subcommands' parsers) accepts -> the key it sets."""
    found: dict[str, str] = {}
    for action in parser._actions:
        found.update({s: action.dest for s in action.option_strings if s.startswith("--")})
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):  # subcommands (LightningCLI's fit, validate, ...)
            for sub in choices.values():
                if isinstance(sub, ArgumentParser):
                    found.update(option_strings(sub))
    return found


def _dashed(token: str, known: dict[str, str]) -> str:
    """`--psb_steps[=v]` -> `--psb-steps[=v]` where only the dashed spelling is an option (both are accepted)."""
    if not token.startswith("--"):
        return token
    name, sep, value = token.partition("=")
    dashed = "--" + name[2:].replace("_", "-")
    return dashed + sep + value if name not in known and dashed in known else token


def closest_option(token: str, known: Iterable[str]) -> str | None:
    """The valid option a misspelt one most likely meant (dashes and underscores count as the same)."""
    known = list(known)
    canon = {k.replace("-", "_"): k for k in known}
    match = difflib.get_close_matches(token.replace("-", "_"), list(canon), n=1, cutoff=0.6)
    return canon[match[0]] if match else None


def one_line(err: BaseException, prog: str = "lit-avatar", known: Iterable[str] = (),
             argv: Sequence[str] = (), options_flag: str = "--config") -> str:
    """Condense an argparse/jsonargparse complaint (usage, union subtypes, nested causes) to one line that
    names the option or key, the value and what was expected, e.g. `--seed 'x': expected an integer`."""
    lines = [ln.strip().lstrip("- ").strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    first = lines[0]
    if first.startswith("unrecognized arguments:"):
        return _unrecognized(first.split(":", 1)[1].split(), prog, known)
    if first.startswith("the following arguments are required:"):
        names = [n.strip() for n in first.split(":", 1)[1].split(",")]
        flags = [n if n.startswith("-") else _flag_for(n, known) for n in names]
        return f"missing {', '.join(flags)} (required; see {prog} --help)"
    match = re.match(r'Parser key "([^"]+)":?(.*)', first)
    if match:
        return _key_error(match.group(1), match.group(2).strip(), lines[1:], known, argv)
    match = re.match(r"argument ([^:]+): invalid (\w+) value: (.*)", first)  # plain argparse's wording
    if match:
        return f"{match.group(1).split('/')[0]} {match.group(3)}: expected {_KINDS.get(match.group(2), match.group(2))}"
    match = re.match(r"argument ([^:]+): invalid choice: (.*) \(choose from (.*)\)", first)
    if match:
        return f"{match.group(1).split('/')[0]} {match.group(2)}: expected one of {match.group(3).replace(chr(39), '')}"
    match = re.match(r"argument ([^:]+): (.*)", first)
    if match:
        return f"{match.group(1).split('/')[0]}: {match.group(2)}"
    return _naming_config_files(" ".join(lines), argv, known, options_flag)


def _naming_config_files(message: str, argv: Sequence[str], known: Iterable[str] = (),
                         flag: str = "--config") -> str:
    """A complaint about an options file's content that does not say which file: add the files given, and
    for an unknown key the closest valid option."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
    files += [a.split("=", 1)[1] for a in argv if a.startswith(f"{flag}=")]
    unknown = re.search(r"Option '([\w.]+)' is not accepted", message)
    if unknown and not message.startswith("--"):
        guess = closest_option(f"--{unknown.group(1)}", known)
        message = f"key '{unknown.group(1)}': not an option" + (f"; did you mean {guess[2:]}?" if guess else "")
    if files and (unknown or "config" in message.lower()) and not any(f in message for f in files):
        return f"{message} (in {flag} {', '.join(files)})"
    return message


def _flag_for(key: str, known: Iterable[str]) -> str:
    """The command-line spelling of a parser key (`psb_steps` -> `--psb-steps` where that is the option)."""
    dests = known if isinstance(known, dict) else {}
    for option in known:
        if dests.get(option) == key or option[2:].replace("-", "_") == key:
            return option
    return f"--{key}"


def _unrecognized(tokens: list[str], prog: str, known: Iterable[str]) -> str:
    option = next((t.split("=", 1)[0] for t in tokens if t.startswith("-")), None)
    if option is None:
        return f"unexpected argument {tokens[0]!r}: options take the form --name value (see {prog} --help)"
    guess = closest_option(option, known)
    hint = f"; did you mean {guess}?" if guess else f"; see {prog} --help"
    return f"{option}: unknown option{hint}"


def _key_error(key: str, rest: str, details: list[str], known: Iterable[str], argv: Sequence[str]) -> str:
    """`Parser key "K": ...` -> `--K 'value': expected KIND`, or the key, the classes its value went through
    and the decisive complaint, e.g. `--model (TeacherModule): Option 'bogus_key' is not accepted`."""
    inner = [m.group(1) for d in details if (m := re.match(r'Parser key "([^"]+)"', d))]
    if inner:  # a nested setting (--data.init_args.batch_size): name the option the user typed
        nested = f"{key}.init_args.{inner[-1]}"
        key = next((k[2:] for k in known if k[2:] in (nested, f"{key}.{inner[-1]}")), nested)
    flag = _flag_for(key, known)
    text = "\n".join([rest, *details])
    kinds = [k for k in re.findall(r"Expected a <class '(\w+)'>", text) if k != "NoneType"]
    kinds += re.findall(r"Expected a (typing\.[^\n]*?)\. Got value", text)
    value = re.search(r"(?:Got|Given) value: (.*)$", text, re.M)
    if kinds and value:
        kind = " or ".join(dict.fromkeys(_KINDS.get(k, k.replace("typing.", "")) for k in kinds))
        return f"{flag} {value.group(1).strip()!r}: expected {kind}"
    classes = [d.split("'")[1].rsplit(".", 1)[-1] if "'" in d else d
               for d in details if d.startswith("Problem with given class_path")]
    noise = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>",
             "Problem with given class_path")
    detail = next((d for d in reversed(details) if not d.startswith(noise)), rest)
    via = f" ({' > '.join(classes)})" if classes else ""
    return f"{flag}{via}: {detail}" if detail else flag


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: Sequence[str]) -> int:
    """Run one command of a group (`lit-avatar`, `lit-avatar data`, `lit-avatar bench`).

    Args:
        prog: the group's command line, e.g. "lit-avatar bench".
        commands: name -> ("module:function", one-line description); the module is imported only when its
            command runs (so `--help` stays fast), the function takes the remaining argv, returns an exit code.
        argv: [NAME, options...].
    """
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(name) for name in commands)
        print(f"usage: {prog} COMMAND [options]   (`{prog} COMMAND --help` documents each)\n\ncommands:")
        print("\n".join(f"  {name:{width}s}  {text}" for name, (_, text) in commands.items()))
        return 0
    name = argv[0]
    if name not in commands:
        guess = difflib.get_close_matches(name, list(commands), n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        raise UserError(f"{prog} {name!r}: unknown command{hint} (expected one of {', '.join(commands)})")
    module_name, function = commands[name][0].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise UserError(f"{prog} {name}: {module_name.replace('.', '/')}.py is not in this install") from None
    return int(getattr(module, function)(argv[1:]) or 0)



def int_list(text: str, option: str, minimum: int = 1) -> list[int]:
    """A comma-separated option such as `--psb-steps 8,6,4` as integers >= `minimum`, or a one-line UserError."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise UserError(f"{option} {text!r}: expected integers >= {minimum} separated by commas, e.g. 8,6,4")
    return values


def size_option(text: str, cell: int, option: str = "--size") -> tuple[int, int]:
    """`--size HxW` as (height, width), each side a positive multiple of `cell` (VAE factor * patch size)."""
    try:
        height, width = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UserError(f"{option} {text!r}: expected HxW, e.g. 64x64") from None
    if height < cell or width < cell or height % cell or width % cell:
        raise UserError(f"{option} {text!r}: expected sides that are positive multiples of {cell} (this "
                        f"checkpoint's pixels per token), e.g. {cell * 4}x{cell * 4}")
    return height, width


def device_option(name: str, option: str = "--device"):
    """`--device cpu|cuda[:N]` as a torch.device, refused in one line where CUDA is not available."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option} {name!r}: expected cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option} {name}: CUDA is not available on this machine (use {option} cpu)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{option} {name!r}: expected cpu or cuda[:N]")
    return device
