"""The response parser and the option validation: pure functions, including a property test."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cogs.depth2img.backends.modelslab_answers import (
    Status,
    error_from_response,
    extract_message,
    parse_response,
)
from cogs.depth2img.core.params import build_params, clean_text
from cogs.depth2img.errors import Depth2ImgError, InvalidInput, MalformedResponseError

# JSON's numbers have no bound: Python reads a 400-digit one as an int that no float holds.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**1024])
    | st.floats()
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
shaped = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["success", "processing", "error", "failed", "weird", ""]) | json_values,
        "output": json_values | st.lists(st.sampled_from(["http://x/a.png", "ftp://x", ""]), max_size=3),
        "id": json_values,
        "eta": json_values,
        "message": json_values,
        "messege": json_values,
        "retry_after": json_values,
        "meta": json_values,
        "generationTime": json_values,
        "fetch_result": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(body=json_values | shaped, status=st.sampled_from([200, 400, 401, 402, 403, 404, 429, 500, 502, 503]))
def test_parser_never_raises_anything_but_our_errors(body, status):
    try:
        parse_response(body, http_status=status)
    except MalformedResponseError:
        pass
    try:
        error_from_response(status, body, text_is_json=True)
    except Depth2ImgError:
        pass


@pytest.mark.parametrize(
    "body",
    [
        {"status": "processing", "eta": 10**400, "id": 1},
        {"status": "success", "output": ["http://h/a-0.png"], "generationTime": 10**400},
        {"status": "error", "message": "rate limit", "retry_after": -(10**400)},
    ],
    ids=["eta", "generationTime", "retry_after"],
)
def test_a_number_no_float_holds_is_read_as_absent(body):
    """A JSON number of 400 digits is a Python int that float() refuses (OverflowError): read as if
    the field were absent, not raised out of the parser as an OverflowError."""
    parse_response(body, http_status=200)
    with pytest.raises(Depth2ImgError):
        error_from_response(429, body, text_is_json=True)


def test_a_balance_or_an_id_of_400_digits_is_not_taken():
    from cogs.depth2img.backends.modelslab_account import parse_balance

    assert parse_balance({"status": "success", "data": {"balance": 10**400}}) is None
    assert parse_balance({"status": "success", "data": {"balance": "12.5"}}).amount == 12.5
    answer = parse_response({"status": "processing", "id": 10**400}, http_status=200)
    assert answer.job_id is None


def test_output_string_and_list_normalise_to_a_tuple():
    a = parse_response({"status": "success", "output": "http://h/a-0.png"})
    b = parse_response({"status": "success", "output": ["http://h/a-0.png"]})
    assert a.output_urls == b.output_urls == ("http://h/a-0.png",)


def test_an_answer_listing_thousands_of_links_keeps_the_first_few():
    """A megabyte of answer may list 40,000 links; the job's row keeps 16 (4 pictures at most, and a
    depth map each), the first ones, in order."""
    many = [f"http://h/a-{i}.png" for i in range(40_000)]
    r = parse_response({"status": "success", "output": many})
    assert r.output_urls == tuple(many[:16])


def test_empty_output_falls_back_to_proxy_links():
    r = parse_response({"status": "success", "output": [], "proxy_links": ["http://h/p.png"]})
    assert r.output_urls == ("http://h/p.png",)


def test_success_without_urls_is_malformed_and_future_links_are_not_results():
    with pytest.raises(MalformedResponseError):
        parse_response({"status": "success", "output": "", "future_links": ["http://h/f.png"]})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"message": "plain"}, "plain"),
        (
            {"message": {"init_image": ["The init image field is required."], "prompt": ["x"]}},
            "The init image field is required. x",
        ),
        ({"messege": "legacy"}, "legacy"),
        ({"error": "from error"}, "from error"),
        ({"tip": "a tip"}, "a tip"),
        ({"message": "  lots   of\n space "}, "lots of space"),
        ({}, None),
    ],
)
def test_message_from_every_field(body, expected):
    assert extract_message(body) == expected


def test_ids_int_or_string_and_processing_fields():
    r = parse_response(
        {"status": "processing", "id": 13481504, "eta": "29.2", "fetch_result": "http://h/f/1"}
    )
    assert (r.status, r.job_id, r.eta_s, r.fetch_url) == (
        Status.PROCESSING,
        "13481504",
        pytest.approx(29.2),
        "http://h/f/1",
    )
    assert parse_response({"status": "success", "id": "abc", "output": "http://h/x"}).job_id == "abc"


def test_non_json_and_unknown_status():
    with pytest.raises(MalformedResponseError):
        parse_response(["not", "an", "object"])
    with pytest.raises(MalformedResponseError):
        parse_response({"status": "sleeping"})


# --- option validation --------------------------------------------------------------------------


def test_prompt_is_cleaned_of_control_characters():
    assert clean_text("a\x00b\u200b c\n\td") == "ab c d"


def _clean_char_by_char(text: str) -> str:
    """The rule clean_text implements, spelt out one character at a time."""
    kept = []
    for ch in text:
        if ch in "\n\r\t":
            kept.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            kept.append(ch)
    return " ".join("".join(kept).split())


@settings(max_examples=500)
@given(st.text(max_size=60) | st.text(st.characters(codec="ascii"), max_size=60))
def test_prompt_cleaning_fast_path_matches_the_rule(text):
    """clean_text takes a shortcut for printable text; it must give what the rule gives."""
    assert clean_text(text) == _clean_char_by_char(text)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"prompt": ""}, "empty"),
        ({"prompt": "   \n\t "}, "empty"),
        ({"prompt": "\x00\x01\x02"}, "empty"),
        ({"prompt": "x" * 1001}, "limit is 1,000"),
        ({"prompt": "ok", "negative_prompt": "y" * 1001}, "negative prompt"),
        ({"prompt": "ok", "strength": 1.5}, "Strength"),
        ({"prompt": "ok", "steps": 0}, "Steps"),
        ({"prompt": "ok", "guidance": 0.5}, "Guidance"),
        ({"prompt": "ok", "seed": -1}, "Seed"),
        ({"prompt": "ok", "samples": 5}, "Samples"),
    ],
)
def test_bad_options_are_refused_with_a_reason(kwargs, fragment):
    with pytest.raises(InvalidInput) as info:
        build_params(**kwargs)
    assert fragment in info.value.reason


def test_good_options_pass_through():
    p = build_params(
        prompt=" a  cabin ", negative_prompt="", strength=0.0, steps=50, guidance=20, seed=0, samples=4
    )
    assert (p.prompt, p.negative_prompt, p.strength, p.steps, p.guidance, p.seed, p.samples) == (
        "a cabin",
        None,
        0.0,
        50,
        20,
        0,
        4,
    )


def test_counts_and_numbers_read_as_people_write_them():
    from cogs.depth2img.config import ConfigError, load_settings
    from cogs.i18n import Plural, text

    def pictures(lang: str) -> list[str]:
        return [text(lang, "count.pictures", n=n) for n in (0, 1, 2, 1000, 1_000_000)]

    assert pictures("en-US") == [
        "0 pictures",
        "1 picture",
        "2 pictures",
        "1,000 pictures",
        "1,000,000 pictures",
    ]
    assert pictures("de") == ["0 Bilder", "1 Bild", "2 Bilder", "1.000 Bilder", "1.000.000 Bilder"]
    # French and Portuguese count 0 as singular, and say "de" before a round million
    assert pictures("fr") == [
        "0 image",
        "1 image",
        "2 images",
        "1\u202f000 images",
        "1\u202f000\u202f000 d'images",
    ]
    assert pictures("pt-BR")[:2] == ["0 imagem", "1 imagem"]
    assert text("en-US", "refused.max_samples", pictures=Plural("count.pictures", 1)).endswith(
        "at most 1 picture per request."
    )
    assert text("es-ES", "input.file_size", size=12.5, limit=10).startswith(
        "El archivo adjunto ocupa 12,5 MB"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings({"SD_API_KEY": "k" * 20, "MAX_INPUT_BYTES": "10"})
    assert caught.value.problems == [
        "MAX_INPUT_BYTES='10' is out of range: use a value from 1,024 to 524,288,000."
    ]
