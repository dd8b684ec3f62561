"""Runs Python blocks of a Markdown file in one namespace, as a reader pasting them into one
interpreter would (tests/test_docs.py starts it in a fresh process, in the test's copy of
the project).

    python tests/docs_exec.py blocks.json

blocks.json: a list of {"doc": "README.md", "line": <first code line>, "source": "..."}.
Each block is compiled under its document's name with its own line numbers, so a traceback
points at the Markdown line that failed.
"""
import json
import sys


def main(payload: str) -> None:
    with open(payload, encoding="utf-8") as f:
        blocks = json.load(f)
    namespace = {"__name__": "__main__"}
    for block in blocks:
        code = compile("\n" * (block["line"] - 1) + block["source"], block["doc"], "exec")
        exec(code, namespace)  # noqa: S102  the project's own documentation, run as documented


if __name__ == "__main__":
    main(sys.argv[1])
