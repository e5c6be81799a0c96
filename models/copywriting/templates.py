"""Template copy: always available, instant, and grounded in the ranking signals.

The "why you see this" line is always built here, from the candidate ``sources``,
even when an LLM writes the headline and body: explanations are never invented.

>>> from models.copywriting.prompt import CopyContext, ItemSignal
>>> ctx = CopyContext([ItemSignal("i1", "Blue Mug", "kitchen", ["covis", "popularity"], ""),
...                    ItemSignal("i2", "Tea Pot", "kitchen", ["session"], "")], "browsing:kitchen")
>>> c = template_copy(ctx)
>>> c["headline"]
'Goes well with what you viewed: Blue Mug'
>>> c["body"]
'Blue Mug and Tea Pot, picked from your browsing in kitchen.'
>>> why_line(ctx)
'Shoppers who viewed the same items also viewed these; popular right now; follows what you browsed this session.'
"""

from __future__ import annotations

from models.copywriting.prompt import CopyContext, ItemSignal, prompt_items

#: Source name fragment -> (headline lead, "why" phrase). Checked in order; first match wins.
_SOURCES: list[tuple[tuple[str, ...], str, str]] = [
    (("buy_again", "reorder", "repurchase"), "Buy it again", "you bought these before"),
    (("new_items",), "New in the shop", "new items like ones you looked at"),
    (("covis", "co-vis", "together", "also"), "Goes well with what you viewed",
     "shoppers who viewed the same items also viewed these"),
    (("next", "session", "sequence", "sknn"), "Picking up where you left off",
     "follows what you browsed this session"),
    (("content", "similar", "text", "embed"), "Similar to what caught your eye",
     "similar to items you looked at"),
    (("trend", "popular", "pop", "top"), "Popular right now", "popular right now"),
    (("cart", "bought", "purchase"), "Complete your order", "goes with items in your cart"),
    (("rank", "model", "personal", "mf", "fm"), "Picked for you", "matches your recent activity"),
]
_DEFAULT = ("Picked for you", "based on your recent activity in this shop")


def _source_phrases(sources: list[str]) -> list[tuple[str, str]]:
    out = []
    for s in sources:
        low = s.lower()
        for frags, lead, why in _SOURCES:
            if any(f in low for f in frags):
                out.append((lead, why))
                break
    return out


def why_line(ctx: CopyContext) -> str:
    """One sentence saying which signals produced this list."""
    seen: list[str] = []
    for item in ctx.items:
        for _, why in _source_phrases(item.sources):
            if why not in seen:
                seen.append(why)
    text = "; ".join(seen[:3]) or _DEFAULT[1]
    return text[0].upper() + text[1:] + "."


def _title(item: ItemSignal) -> str:
    return item.title or "this pick"


def template_copy(ctx: CopyContext) -> dict[str, str]:
    """Headline, body and why for ``ctx``, from titles and signals only."""
    items = prompt_items(ctx)
    if not items:
        return {"headline": "Picked for you", "body": "A few things you might like.", "why": why_line(ctx)}
    top = items[0]
    phrases = _source_phrases(top.sources)
    lead = phrases[0][0] if phrases else _DEFAULT[0]
    headline = f"{lead}: {_title(top)}"[:70]
    names = [_title(i) for i in items[:3] if i.title] or [_title(top)]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    level, _, cats = ctx.segment.partition(":")
    where = f" in {cats.replace('+', ' and ')}" if cats and cats != "any" else ""
    tail = {"new": "popular picks to start with", "browsing": f"picked from your browsing{where}",
            "engaged": f"picked from your browsing{where}",
            "buying": "to go with your cart"}.get(level, "picked for you")
    body = f"{listed}, {tail}."
    return {"headline": headline, "body": body[:240], "why": why_line(ctx)}
