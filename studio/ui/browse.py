"""Browse tab: filtered, sorted, paged gallery and a detail view of one photo."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..dataset.browse import (CAPTION_STATUSES, OUTLIER_CHOICES, SORTS, SPLIT_CHOICES, STATUSES, BrowseError,
                              BrowseFilter, BrowsePage, browse, filter_choices, image_detail)
from ..codes import REASONS
from ..dataset.stats import stale_message
from .access import StudioContext
from .wiring import Wiring

PAGE_SIZES = [24, 48, 96]


@dataclass
class BrowseTab:
    tab: gr.Tab
    filters: dict  # name -> component, in the order of _filter's parameters
    page: gr.Number
    page_size: gr.Dropdown
    summary: gr.Markdown
    gallery: gr.Gallery
    ids: gr.State
    apply: gr.Button
    prev: gr.Button
    next: gr.Button
    detail_image: gr.Image
    detail_problem: gr.Markdown
    detail_text: gr.Markdown
    detail_meta: gr.JSON
    detail_same: gr.Gallery
    same_ids: gr.State


def build() -> BrowseTab:
    with gr.Tab("Browse", id="browse", visible=False) as tab:
        with gr.Row():
            persons = gr.Dropdown(label="Person", multiselect=True, choices=[], scale=2, allow_custom_value=True)
            status = gr.Radio(list(STATUSES), value="all", label="Curation")
            reason = gr.Dropdown(["any", *REASONS], value="any", label="Rejection reason")
            pose = gr.Dropdown(["any"], value="any", label="Pose")
            tags = gr.Dropdown(label="Attributes (all of)", multiselect=True, choices=[])
            outlier = gr.Radio(list(OUTLIER_CHOICES), value="any", label="Identity outlier")
        with gr.Row():
            min_side = gr.Textbox(label="Shortest side ≥ (px)", placeholder="any", elem_id="min-side")
            max_side = gr.Textbox(label="Shortest side ≤ (px)", placeholder="any", elem_id="max-side")
            min_ratio = gr.Textbox(label="Face ratio ≥ (0-1)", placeholder="any", elem_id="min-ratio")
            max_ratio = gr.Textbox(label="Face ratio ≤ (0-1)", placeholder="any", elem_id="max-ratio")
            caption_text = gr.Textbox(label="Caption contains", placeholder="smiling glasses")
            caption_status = gr.Dropdown(["any", *CAPTION_STATUSES], value="any", label="Caption status")
            split = gr.Dropdown(["any", *SPLIT_CHOICES], value="any", label="Split", info="the person's cross-training split")
        with gr.Row():
            sort = gr.Dropdown(list(SORTS), value="id", label="Sort by")
            descending = gr.Checkbox(label="Descending", value=False, min_width=150, elem_id="descending")
            apply = gr.Button("Apply filters", variant="primary")
            prev = gr.Button("◀ Previous")
            page = gr.Number(label="Page", value=1, precision=0, minimum=1, elem_id="page")
            page_size = gr.Dropdown(PAGE_SIZES, value=48, label="Per page")
            nxt = gr.Button("Next ▶")
        summary = gr.Markdown(elem_id="browse-summary")
        # thumbnails are whole photos and shown whole: cropping would cut the faces off
        gallery = gr.Gallery(label="Photos", columns=8, height="auto", allow_preview=False, object_fit="contain",
                             elem_id="browse-gallery")
        ids = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                detail_image = gr.Image(label="Detail: faces and keypoints (subject face in green)", interactive=False,
                                        height=640, elem_id="detail-image")
                detail_problem = gr.Markdown()
            with gr.Column(scale=2):
                detail_text = gr.Markdown(elem_id="detail-text")
                with gr.Accordion("All fields (JSON)", open=False):
                    detail_meta = gr.JSON(label="Metadata", elem_id="detail-meta")
        detail_same = gr.Gallery(label="Other photos of this person (click to open)", columns=8, height="auto",
                                 allow_preview=False, object_fit="contain", elem_id="same-person")
        same_ids = gr.State([])
    filters = dict(persons=persons, status=status, reason=reason, pose=pose, tags=tags, min_side=min_side,
                   max_side=max_side, min_ratio=min_ratio, max_ratio=max_ratio, outlier=outlier,
                   caption_text=caption_text, caption_status=caption_status, sort=sort, descending=descending,
                   split=split)
    return BrowseTab(tab, filters, page, page_size, summary, gallery, ids, apply, prev, nxt,
                     detail_image, detail_problem, detail_text, detail_meta, detail_same, same_ids)


def _filter(persons, status, reason, pose, tags, min_side, max_side, min_ratio, max_ratio, outlier, caption_text,
            caption_status, sort, descending, split="any") -> BrowseFilter:
    """Widget values (None for empty numbers, "any" for no choice) -> a BrowseFilter."""
    def opt(v):
        return None if v in (None, "", "any") else v

    def num(v, cast, name):
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        try:
            return cast(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError):
            raise BrowseError(f"{name}: {v!r} is not a number") from None

    return BrowseFilter(
        persons=list(persons or []), status=status or "all", reason=opt(reason), pose=opt(pose),
        tags=list(tags or []), min_side=num(min_side, int, "shortest side minimum"),
        max_side=num(max_side, int, "shortest side maximum"), min_face_ratio=num(min_ratio, float, "face ratio minimum"),
        max_face_ratio=num(max_ratio, float, "face ratio maximum"), outlier=outlier or "any",
        caption_text=caption_text or "", caption_status=opt(caption_status), sort=sort or "id",
        descending=bool(descending), split=opt(split),
    )


def _page_number(value) -> int:
    if value is None or value == "":
        return 1
    try:
        return max(1, int(value))
    except (TypeError, ValueError, OverflowError):
        raise BrowseError(f"page must be a whole number, got {value!r}") from None


def _page(ctx: StudioContext, f: BrowseFilter, page, page_size) -> BrowsePage:
    return browse(ctx.ws, f, page=_page_number(page), page_size=int(page_size or 48))


def _gallery(ctx: StudioContext, result: BrowsePage):
    items = [
        (ctx.media.thumbnail(r["media_path"], r["media_missing"]),
         f"#{r['image_id']} {r['person']} · {r['status']}" + (f" · {', '.join(r['reasons'])}" if r["reasons"] else "")
         + (" · media file missing" if r["media_missing"] else ""))
        for r in result.items
    ]
    return result.summary, items, [r["image_id"] for r in result.items], result.page


def detail_markdown(m: dict) -> str:
    """The detail's metadata as a person reads it: verdict, reasons, the subject face, every face."""
    lines = [f"### #{m['id']} · {m['person']} · {m['status']}",
             f"**Reasons:** {', '.join(m['reasons']) or 'none'}" + (" · *verdict is stale: run curate*" if m["verdict_stale"] else ""),
             f"**Size:** {m['size']} ({m['original_mode']}{', EXIF-rotated' if m['exif_rotated'] else ''}) · "
             f"**face pack:** {m['face_pack'] or 'not analyzed'}"]
    if m["subject_face"] is not None:
        sim = "" if m["identity_sim"] is None else f" · identity similarity {m['identity_sim']:.3f}"
        lines.append(f"**Subject face:** #{m['subject_face']}, {m['subject_chosen_by']}{sim}"
                     + (" · **identity outlier**" if m["outlier"] else ""))
    if m["faces"]:
        lines += ["", "**Faces:**"]
        lines += [f"- #{f['index']}{' **(subject)**' if f['index'] == m['subject_face'] else ''}: "
                  f"{f['area_ratio']:.1%} of the image, {f['pose'] or 'pose unknown'}, detection score {f['score']:.2f}, "
                  f"box {', '.join(f'{v:.0f}' for v in f['bbox'])}"
                  for f in m["faces"]]
    elif m["analysis_error"]:
        lines.append(f"**Analysis failed:** {m['analysis_error']}")
    if m["caption"]:
        lines += ["", f"**Caption ({m['caption_status']}):** {m['caption']}"]
    if m["tags"]:
        lines.append(f"**Tags:** {', '.join(m['tags'])}")
    lines.append(f"**Source:** `{m['source']}`")
    return "\n\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:])


def _detail_outputs(ctx: StudioContext, image_id):
    d = image_detail(ctx.ws, image_id)
    same = [(ctx.media.thumbnail(o["media_path"]), o["label"]) for o in d["same_person"]]
    return (d["annotated"], d["problem"] or "", detail_markdown(d["metadata"]), d["metadata"], same,
            [o["image_id"] for o in d["same_person"]])


#: most persons offered in the filter's list; any other name can be typed
MAX_PERSON_CHOICES = 2000


def choices_update(ctx: StudioContext):
    """Fresh choices for the person / pose / attribute filters."""
    c = filter_choices(ctx.ws)
    persons, label = c["persons"], "Person"
    if len(persons) > MAX_PERSON_CHOICES:  # FaceID-6M has ~10^5 persons: a list that size stalls the page
        persons = sorted(sorted(persons, key=lambda p: -p[1])[:MAX_PERSON_CHOICES])
        label = (f"Person (the {MAX_PERSON_CHOICES:,} with most images of {len(c['persons']):,} are listed; "
                 "type any name)")
    return (gr.update(choices=[(f"{name} ({n})", name) for name, n in persons], label=label),
            gr.update(choices=["any", *c["poses"]]),
            gr.update(choices=c["tags"]))


def first_page(ctx: StudioContext):
    """The opening page, with a word when verdicts are older than the analyses."""
    summary, *rest = _gallery(ctx, _page(ctx, BrowseFilter(), 1, 48))
    stale = stale_message(ctx.ws.store.stale_verdicts())
    return (summary + (f"\n\n**Warning:** {stale}" if stale else ""), *rest)


def wire(ctx: StudioContext, t: BrowseTab) -> None:
    w = Wiring(ctx)
    page_outputs = [t.summary, t.gallery, t.ids, t.page]
    detail_outputs = [t.detail_image, t.detail_problem, t.detail_text, t.detail_meta, t.detail_same, t.same_ids]

    def show(values, page, page_size):
        return _gallery(ctx, _page(ctx, _filter(*values), page, page_size))

    def on_apply(request: gr.Request, *values):
        return show(values[:-2], 1, values[-1])

    def on_page(request: gr.Request, *values):
        return show(values[:-2], values[-2], values[-1])

    def on_step(delta: int):
        def step(request: gr.Request, *values):
            return show(values[:-2], max(1, _page_number(values[-2]) + delta), values[-1])
        return step

    def on_select():
        def select(request: gr.Request, ids: list, evt: gr.SelectData):
            return _detail_outputs(ctx, ids[evt.index])
        return select

    inputs = [*t.filters.values(), t.page, t.page_size]
    w.on(t.apply.click, on_apply, inputs, page_outputs)
    w.on(t.page.submit, on_page, inputs, page_outputs)
    w.on(t.prev.click, on_step(-1), inputs, page_outputs)
    w.on(t.next.click, on_step(+1), inputs, page_outputs)
    w.on(t.gallery.select, on_select(), [t.ids], detail_outputs)
    w.on(t.detail_same.select, on_select(), [t.same_ids], detail_outputs)

    def browse_api(request: gr.Request, persons: list[str] | None = None, status: str = "all", reason: str = "any",
                   pose: str = "any", tags: list[str] | None = None, min_side: int | None = None,
                   max_side: int | None = None, min_face_ratio: float | None = None,
                   max_face_ratio: float | None = None, outlier: str = "any", caption_text: str = "",
                   caption_status: str = "any", sort: str = "id", descending: bool = False, page: int = 1,
                   page_size: int = 48, split: str = "any") -> dict:
        """One page of images matching the filters, with their metadata (a page past the end gives the last)."""
        f = _filter(persons, status, reason, pose, tags, min_side, max_side, min_face_ratio, max_face_ratio,
                    outlier, caption_text, caption_status, sort, descending, split)
        result = _page(ctx, f, page, page_size)
        keep = ("image_id", "person", "status", "reasons", "pose", "width", "height", "face_count", "face_ratio",
                "outlier", "identity_sim", "caption", "caption_status", "media_path", "media_missing")
        return {"total": result.total, "page": result.page, "pages": result.pages,
                "items": [{k: r[k] for k in keep} for r in result.items]}

    def detail_api(request: gr.Request, image_id: int) -> dict:
        """All metadata of one image, a problem message if its photo cannot be shown, and the person's other photos."""
        d = image_detail(ctx.ws, image_id)
        return {"metadata": d["metadata"], "problem": d["problem"],
                "same_person": [o["image_id"] for o in d["same_person"]]}

    w.api(browse_api, "browse")
    w.api(detail_api, "detail")
