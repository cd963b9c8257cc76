"""MkDocs hook: the params and command-line references, generated from the
code that defines them (one source of truth: a key or flag without its entry
cannot exist)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def params_reference() -> str:
    import yaml

    from tlpipe import params

    return params.reference_markdown(yaml.safe_load((ROOT / "params.yaml").read_text()))


def cli_reference() -> str:
    from tlpipe import cli

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the same page everywhere
    top = cli.parser()
    out = ["```text", top.format_help().rstrip(), "```"]
    (commands,) = [a for a in top._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name, sub in commands.choices.items():
        out += ["", f"## `tlpipe {name}`", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(out) + "\n"


def on_page_markdown(markdown, page, config, files):
    for marker, make in (("{{ params_reference }}", params_reference), ("{{ cli_reference }}", cli_reference)):
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
