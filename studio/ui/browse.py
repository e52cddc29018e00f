"""Browse tab: filtered, sorted, paged gallery and a detail view of one photo."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..browse import (CAPTION_STATUSES, OUTLIER_CHOICES, SORTS, STATUSES, BrowseError, BrowseFilter, BrowsePage, browse,
                      filter_choices, image_detail)
from ..curate import REASONS
from .access import StudioContext, require_admin
from .media import gallery_image

PAGE_SIZES = [24, 48, 96]


@dataclass
class BrowseTab:
    tab: gr.Tab
    filters: list
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
    detail_meta: gr.JSON
    detail_same: gr.Gallery


def build() -> BrowseTab:
    with gr.Tab("Browse", id="browse", visible=False) as tab:
        with gr.Row():
            persons = gr.Dropdown(label="Person", multiselect=True, choices=[], scale=2)
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
            sort = gr.Dropdown(list(SORTS), value="id", label="Sort by")
            descending = gr.Checkbox(label="Descending", value=False)
        with gr.Row():
            apply = gr.Button("Apply filters", variant="primary")
            prev = gr.Button("◀ Previous")
            page = gr.Number(label="Page", value=1, precision=0, minimum=1)
            page_size = gr.Dropdown(PAGE_SIZES, value=48, label="Per page")
            nxt = gr.Button("Next ▶")
        summary = gr.Markdown()
        gallery = gr.Gallery(label="Photos", columns=8, height="auto", allow_preview=False, elem_id="browse-gallery")
        ids = gr.State([])
        with gr.Row():
            with gr.Column(scale=2):
                detail_image = gr.Image(label="Detail: faces and keypoints", interactive=False, elem_id="detail-image")
                detail_problem = gr.Markdown()
            with gr.Column(scale=1):
                detail_meta = gr.JSON(label="Metadata", elem_id="detail-meta")
        detail_same = gr.Gallery(label="Other photos of this person", columns=8, height="auto", allow_preview=False)
    filters = [persons, status, reason, pose, tags, min_side, max_side, min_ratio, max_ratio, outlier,
               caption_text, caption_status, sort, descending]
    return BrowseTab(tab, filters, page, page_size, summary, gallery, ids, apply, prev, nxt,
                     detail_image, detail_problem, detail_meta, detail_same)


def _none_if_any(v):
    return None if v in (None, "", "any") else v


def _int(v):
    return None if v is None else int(v)


def _float(v):
    return None if v is None else float(v)


def _filter(persons, status, reason, pose, tags, min_side, max_side, min_ratio, max_ratio, outlier, caption_text,
            caption_status, sort, descending) -> BrowseFilter:
    """Widget values (None for empty numbers, "any" for no choice) -> a BrowseFilter."""
    def opt(v):
        return None if v in (None, "", "any") else v

    def num(v, cast, name):
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        try:
            return cast(v.strip() if isinstance(v, str) else v)
        except ValueError:
            raise BrowseError(f"{name}: {v!r} is not a number") from None

    return BrowseFilter(
        persons=list(persons or []), status=status or "all", reason=opt(reason), pose=opt(pose),
        tags=list(tags or []), min_side=num(min_side, int, "shortest side minimum"),
        max_side=num(max_side, int, "shortest side maximum"), min_face_ratio=num(min_ratio, float, "face ratio minimum"),
        max_face_ratio=num(max_ratio, float, "face ratio maximum"), outlier=outlier or "any",
        caption_text=caption_text or "", caption_status=opt(caption_status), sort=sort or "id",
        descending=bool(descending),
    )


def _checked_filter(*values) -> BrowseFilter:
    try:
        return _filter(*values)
    except BrowseError as exc:
        raise gr.Error(str(exc)) from None


def _page(ctx: StudioContext, f: BrowseFilter, page, page_size) -> BrowsePage:
    try:
        return browse(ctx.ws, f, page=int(page or 1), page_size=int(page_size or 48))
    except (BrowseError, ValueError) as exc:
        raise gr.Error(str(exc)) from None


def _gallery(ctx: StudioContext, result: BrowsePage):
    items = [
        (gallery_image(ctx.ws, r["media_path"], r["media_missing"]),
         f"#{r['image_id']} {r['person']} · {r['status']}" + (f" · {', '.join(r['reasons'])}" if r["reasons"] else "")
         + (" · media file missing" if r["media_missing"] else ""))
        for r in result.items
    ]
    return result.summary, items, [r["image_id"] for r in result.items], result.page


def _detail(ctx: StudioContext, image_id) -> dict:
    try:
        return image_detail(ctx.ws, int(image_id))
    except (BrowseError, TypeError, ValueError) as exc:
        raise gr.Error(str(exc)) from None


def choices_update(ctx: StudioContext):
    """Fresh choices for the person / pose / attribute filters."""
    c = filter_choices(ctx.ws)
    return (gr.update(choices=[(f"{name} ({n})", name) for name, n in c["persons"]]),
            gr.update(choices=["any", *c["poses"]]),
            gr.update(choices=c["tags"]))


def first_page(ctx: StudioContext):
    return _gallery(ctx, _page(ctx, BrowseFilter(), 1, 48))


def wire(ctx: StudioContext, t: BrowseTab) -> None:
    page_outputs = [t.summary, t.gallery, t.ids, t.page]
    detail_outputs = [t.detail_image, t.detail_problem, t.detail_meta, t.detail_same]

    def show(values, page, page_size, request):
        require_admin(ctx, request)
        return _gallery(ctx, _page(ctx, _checked_filter(*values), page, page_size))

    def on_apply(request: gr.Request, *values):
        return show(values[:-2], 1, values[-1], request)

    def on_page(request: gr.Request, *values):
        return show(values[:-2], values[-2], values[-1], request)

    def on_step(delta: int):
        def step(request: gr.Request, *values):
            return show(values[:-2], max(1, int(values[-2] or 1) + delta), values[-1], request)
        return step

    def on_select(request: gr.Request, ids: list, evt: gr.SelectData):
        require_admin(ctx, request)
        d = _detail(ctx, ids[evt.index])
        return d["annotated"], d["problem"] or "", d["metadata"], d["same_person"]

    inputs = [*t.filters, t.page, t.page_size]
    private = {"api_visibility": "private"}
    t.apply.click(on_apply, inputs, page_outputs, **private)
    t.page.submit(on_page, inputs, page_outputs, **private)
    t.prev.click(on_step(-1), inputs, page_outputs, **private)
    t.next.click(on_step(+1), inputs, page_outputs, **private)
    t.gallery.select(on_select, [t.ids], detail_outputs, **private)

    def browse_api(request: gr.Request, persons: list[str] | None = None, status: str = "all", reason: str = "any",
                   pose: str = "any", tags: list[str] | None = None, min_side: int | None = None,
                   max_side: int | None = None, min_face_ratio: float | None = None,
                   max_face_ratio: float | None = None, outlier: str = "any", caption_text: str = "",
                   caption_status: str = "any", sort: str = "id", descending: bool = False, page: int = 1,
                   page_size: int = 48) -> dict:
        """One page of images matching the filters, with their metadata."""
        require_admin(ctx, request)
        f = _checked_filter(persons, status, reason, pose, tags, min_side, max_side, min_face_ratio, max_face_ratio,
                            outlier, caption_text, caption_status, sort, descending)
        result = _page(ctx, f, page, page_size)
        keep = ("image_id", "person", "status", "reasons", "pose", "width", "height", "face_count", "face_ratio",
                "outlier", "identity_sim", "caption", "caption_status", "media_path", "media_missing")
        return {"total": result.total, "page": result.page, "pages": result.pages,
                "items": [{k: r[k] for k in keep} for r in result.items]}

    def detail_api(request: gr.Request, image_id: int) -> dict:
        """All metadata of one image, a problem message if its photo cannot be shown, and the person's other photos."""
        require_admin(ctx, request)
        d = _detail(ctx, image_id)
        return {"metadata": d["metadata"], "problem": d["problem"], "same_person": [p for p, _ in d["same_person"]]}

    gr.api(browse_api, api_name="browse")
    gr.api(detail_api, api_name="detail")
