"""``prosam review OUT``: a labelling job's masks as a contact sheet, worst first."""

from __future__ import annotations

import argparse

from prosam.cli.options import positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review",
        help="render a labelling job's masks as one HTML page, worst quality estimate first",
    )
    p.add_argument("out", help="the output folder of `prosam label`")
    p.add_argument(
        "--limit", type=positive_int, default=None, help="show only the first N masks of the queue"
    )
    p.add_argument(
        "--side",
        type=positive_int,
        default=256,
        help="thumbnail side in pixels (default %(default)s)",
    )
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.set_defaults(func=cmd_review)


def cmd_review(args: argparse.Namespace) -> int:
    """Write ``OUT/review.html`` (and its thumbnails) and print its path."""
    from prosam.label.review import write_contact_sheet

    path = write_contact_sheet(args.out, limit=args.limit, side=args.side)
    print(path)
    if args.open:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    return 0
