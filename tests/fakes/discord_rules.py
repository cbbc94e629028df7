"""Discord's documented rules that its OpenAPI description does not encode, for the fake Discord. Each
function takes a request body as the bot sent it and returns what Discord would refuse in it.

Sources (Discord's developer documentation):

- Messages (https://discord.com/developers/docs/resources/message#create-message): content up to 2000
  characters, up to 10 embeds and 10 files; allowed_mentions may not list ``users`` both in ``parse``
  and as ids (#allowed-mentions-object, "mutually exclusive").
- Components (https://discord.com/developers/docs/components/reference): up to 5 action rows, up to 5
  buttons or one select in a row; custom ids up to 100 characters and unique within a message; button
  labels up to 80 characters; a link button has a url and no custom id, any other a custom id.
- Modals (https://discord.com/developers/docs/interactions/receiving-and-responding#interaction-response-object-modal):
  custom id up to 100 characters, title up to 45, 1 to 5 rows of one text input each; text inputs
  (components/reference#text-input): label up to 45, placeholder up to 100, value and lengths up to 4000.
- Application commands (https://discord.com/developers/docs/interactions/application-commands):
  chat-input names 1-32 characters matching ``^[-_\\p{L}\\p{N}\\p{sc=Deva}\\p{sc=Thai}]{1,32}$``, lower
  case where the letter has one, descriptions 1-100; context-menu commands take no description or
  options; up to 25 options and 25 choices, choice names 1-100, string values up to 100; required options
  before optional ones; sub-commands and groups not mixed with other options, groups holding only
  sub-commands; option names unique; localizations keyed by the locales of
  https://discord.com/developers/docs/reference#locales, values under the same rules; the combined
  characters of names, descriptions and choice values at most 4000 per command.
"""

from __future__ import annotations

from typing import Any

LOCALES = frozenset(
    [
        "id",
        "da",
        "de",
        "en-GB",
        "en-US",
        "es-ES",
        "es-419",
        "fr",
        "hr",
        "it",
        "lt",
        "hu",
        "nl",
        "no",
        "pl",
        "pt-BR",
        "ro",
        "fi",
        "sv-SE",
        "vi",
        "tr",
        "cs",
        "el",
        "bg",
        "ru",
        "uk",
        "hi",
        "th",
        "zh-CN",
        "ja",
        "zh-TW",
        "ko",
    ]
)
SUBCOMMAND, GROUP = 1, 2
CHAT_INPUT = 1
COMPONENTS_V2 = 1 << 15


def _chat_name_ok(name: object) -> bool:
    return (
        isinstance(name, str)
        and 1 <= len(name) <= 32
        and all(c in "-_" or c.isalnum() for c in name)
        and name == name.lower()
    )


def _localized(problems: list[str], where: str, value: Any, check: Any) -> None:
    for key, text in (value or {}).items():
        if key not in LOCALES:
            problems.append(f"{where}: {key!r} is not one of Discord's locales")
        elif not check(text):
            problems.append(f"{where}.{key}: {text!r} breaks the rule for this field")


def command_problems(cmd: dict[str, Any]) -> list[str]:
    """One command of a bulk overwrite (PUT .../commands)."""
    problems: list[str] = []
    name = cmd.get("name", "")
    kind = cmd.get("type", CHAT_INPUT)
    where = f"command {name!r}"
    if kind == CHAT_INPUT:
        if not _chat_name_ok(name):
            problems.append(f"{where}: a chat-input name must be 1-32 lower-case letters, digits, - or _")
        if not 1 <= len(cmd.get("description") or "") <= 100:
            problems.append(f"{where}: description must be 1-100 characters")
        _localized(problems, f"{where} name_localizations", cmd.get("name_localizations"), _chat_name_ok)
    else:
        if not 1 <= len(name) <= 32:
            problems.append(f"{where}: a context-menu name must be 1-32 characters")
        if cmd.get("description") or cmd.get("options"):
            problems.append(f"{where}: a context-menu command takes no description or options")
        _localized(
            problems,
            f"{where} name_localizations",
            cmd.get("name_localizations"),
            lambda t: isinstance(t, str) and 1 <= len(t) <= 32,
        )
    _localized(
        problems,
        f"{where} description_localizations",
        cmd.get("description_localizations"),
        lambda t: isinstance(t, str) and 1 <= len(t) <= 100,
    )
    options = cmd.get("options") or []
    problems += _options_problems(where, options, depth=0)
    if _characters(cmd) > 4000:
        problems.append(f"{where}: more than 4000 characters of names, descriptions and values")
    return problems


def _options_problems(where: str, options: list[dict[str, Any]], *, depth: int) -> list[str]:
    problems: list[str] = []
    if len(options) > 25:
        problems.append(f"{where}: at most 25 options")
    kinds = {o.get("type") for o in options}
    if kinds & {SUBCOMMAND, GROUP} and kinds - {SUBCOMMAND, GROUP}:
        problems.append(f"{where}: sub-commands cannot be mixed with other options")
    names = [o.get("name") for o in options]
    if len(names) != len(set(names)):
        problems.append(f"{where}: option names must be unique")
    seen_optional = False
    for opt in options:
        here = f"{where} option {opt.get('name')!r}"
        if not _chat_name_ok(opt.get("name")):
            problems.append(f"{here}: name must be 1-32 lower-case letters, digits, - or _")
        if not 1 <= len(opt.get("description") or "") <= 100:
            problems.append(f"{here}: description must be 1-100 characters")
        _localized(problems, f"{here} name_localizations", opt.get("name_localizations"), _chat_name_ok)
        _localized(
            problems,
            f"{here} description_localizations",
            opt.get("description_localizations"),
            lambda t: isinstance(t, str) and 1 <= len(t) <= 100,
        )
        kind = opt.get("type")
        if kind == GROUP:
            if depth > 0:
                problems.append(f"{here}: a group can only be at the top")
            if any(o.get("type") != SUBCOMMAND for o in opt.get("options") or []):
                problems.append(f"{here}: a group holds only sub-commands")
        if kind in (SUBCOMMAND, GROUP):
            problems += _options_problems(here, opt.get("options") or [], depth=depth + 1)
            continue
        if opt.get("required"):
            if seen_optional:
                problems.append(f"{here}: required options must come before optional ones")
        else:
            seen_optional = True
        choices = opt.get("choices") or []
        if len(choices) > 25:
            problems.append(f"{here}: at most 25 choices")
        for choice in choices:
            if not 1 <= len(choice.get("name") or "") <= 100:
                problems.append(f"{here}: choice names must be 1-100 characters")
            if isinstance(choice.get("value"), str) and len(choice["value"]) > 100:
                problems.append(f"{here}: string choice values must be at most 100 characters")
            _localized(
                problems,
                f"{here} choice name_localizations",
                choice.get("name_localizations"),
                lambda t: isinstance(t, str) and 1 <= len(t) <= 100,
            )
    return problems


def _characters(cmd: dict[str, Any]) -> int:
    total = len(cmd.get("name") or "") + len(cmd.get("description") or "")
    for opt in cmd.get("options") or []:
        total += _characters(opt)
        total += sum(
            len(c.get("name") or "") + len(str(c.get("value", ""))) for c in opt.get("choices") or []
        )
    return total


def message_problems(body: dict[str, Any]) -> list[str]:
    """A message as created or edited (channel messages, interaction callbacks' data, webhooks)."""
    problems: list[str] = []
    content = body.get("content")
    if isinstance(content, str) and len(content) > 2000:
        problems.append(f"content: {len(content)} characters, at most 2000")
    if len(body.get("embeds") or []) > 10:
        problems.append("embeds: at most 10")
    if len(body.get("attachments") or []) > 10:
        problems.append("attachments: at most 10")
    mentions = body.get("allowed_mentions") or {}
    for kind in ("users", "roles"):
        if kind in (mentions.get("parse") or []) and mentions.get(kind):
            problems.append(f"allowed_mentions: {kind!r} both in parse and listed (mutually exclusive)")
    if not int(body.get("flags") or 0) & COMPONENTS_V2:
        problems += components_problems(body.get("components") or [])
    return problems


def components_problems(rows: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    if len(rows) > 5:
        problems.append(f"components: {len(rows)} rows, at most 5")
    ids: list[str] = []
    for r, row in enumerate(rows):
        items = row.get("components") or []
        buttons = [c for c in items if c.get("type") == 2]
        if len(buttons) > 5 or (len(items) > 1 and len(buttons) != len(items)):
            problems.append(f"components.{r}: at most 5 buttons, or one select, in a row")
        for c, item in enumerate(items):
            here = f"components.{r}.components.{c}"
            custom_id = item.get("custom_id")
            if item.get("type") == 2 and item.get("style") == 5:
                if custom_id is not None or not item.get("url"):
                    problems.append(f"{here}: a link button has a url and no custom_id")
            elif item.get("type") == 2 and item.get("style") != 6 and not custom_id:
                problems.append(f"{here}: a button needs a custom_id")
            if custom_id is not None:
                if not 1 <= len(custom_id) <= 100:
                    problems.append(f"{here}: custom_id must be 1-100 characters")
                ids.append(custom_id)
            if item.get("type") == 2 and len(item.get("label") or "") > 80:
                problems.append(f"{here}: label at most 80 characters")
    if len(ids) != len(set(ids)):
        problems.append("components: custom_ids must be unique within a message")
    return problems


def modal_problems(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if not 1 <= len(data.get("custom_id") or "") <= 100:
        problems.append("modal: custom_id must be 1-100 characters")
    if not 1 <= len(data.get("title") or "") <= 45:
        problems.append("modal: title must be 1-45 characters")
    rows = data.get("components") or []
    if not 1 <= len(rows) <= 5:
        problems.append(f"modal: {len(rows)} rows, 1 to 5")
    ids: list[str] = []
    for r, row in enumerate(rows):
        items = row.get("components") or [] if row.get("type") == 1 else [row.get("component") or {}]
        if row.get("type") == 1 and len(items) != 1:
            problems.append(f"modal row {r}: one text input per row")
        for item in items:
            here = f"modal row {r}"
            ids.append(item.get("custom_id") or "")
            if not 1 <= len(item.get("custom_id") or "") <= 100:
                problems.append(f"{here}: custom_id must be 1-100 characters")
            if item.get("type") == 4:
                if row.get("type") == 1 and not 1 <= len(item.get("label") or "") <= 45:
                    problems.append(f"{here}: label must be 1-45 characters")
                if len(item.get("placeholder") or "") > 100:
                    problems.append(f"{here}: placeholder at most 100 characters")
                if len(item.get("value") or "") > 4000:
                    problems.append(f"{here}: value at most 4000 characters")
                low, high = item.get("min_length"), item.get("max_length")
                if (low is not None and not 0 <= low <= 4000) or (high is not None and not 1 <= high <= 4000):
                    problems.append(f"{here}: min_length 0-4000, max_length 1-4000")
    if len(ids) != len(set(ids)):
        problems.append("modal: custom_ids must be unique")
    return problems


def request_problems(method: str, route: str | None, body: Any) -> list[str]:
    """The documented rules for one request, by its route (as the OpenAPI description names it)."""
    if route is None or body is None:
        return []
    if method == "PUT" and route.endswith("/commands") and isinstance(body, list):
        problems: list[str] = []
        for cmd in body:
            problems += command_problems(cmd)
        chat = [c.get("name") for c in body if c.get("type", CHAT_INPUT) == CHAT_INPUT]
        if len(chat) > 100 or len(chat) != len(set(chat)):
            problems.append("commands: at most 100 chat-input commands, names unique")
        return problems
    if not isinstance(body, dict):
        return []
    if route.endswith("/callback"):
        data = body.get("data") or {}
        if body.get("type") == 9:
            return modal_problems(data)
        return message_problems(data) if body.get("type") in (4, 7) else []
    if "/messages" in route or route.startswith("/webhooks/"):
        return message_problems(body)
    return []
