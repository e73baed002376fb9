// Small DOM helpers: build elements, keep keyboard focus across re-renders, tell the user.
import { ApiError } from "./api.js";
export function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false)
            continue;
        if (typeof v === "function")
            el.addEventListener(k.replace(/^on/, ""), v);
        else if (v === true)
            el.setAttribute(k, "");
        else
            el.setAttribute(k, String(v));
    }
    for (const c of children) {
        if (c === null || c === undefined || c === false)
            continue;
        el.append(c);
    }
    return el;
}
/**
 * Replace a region's content without losing the keyboard user's place: the element
 * that had focus is found again by its `data-key` in the new content.
 */
export function replace(region, ...children) {
    const active = document.activeElement;
    const key = active && region.contains(active) ? active.dataset.key : undefined;
    region.replaceChildren(...children.filter((c) => !!c));
    if (key) {
        const again = region.querySelector(`[data-key="${CSS.escape(key)}"]`);
        again?.focus();
    }
}
let errorRegion = null;
let statusRegion = null;
export function regions(errors, status) {
    errorRegion = errors;
    statusRegion = status;
}
/** An error as the problem's title and detail (role=alert: screen readers read it at once). */
export function showError(err, context = "") {
    if (!errorRegion)
        return;
    const e = err instanceof ApiError ? err : new ApiError(0, "Something went wrong", String(err), "");
    const item = h("div", { class: "problem", "data-code": e.code, "data-status": e.status }, h("strong", { class: "problem-title" }, context ? `${context}: ${e.title}` : e.title), e.detail ? h("span", { class: "problem-detail" }, ` — ${e.detail}`) : null, e.code ? h("code", { class: "problem-code" }, e.code) : null, 
    // The fields, unless the detail already names each of them.
    e.fields.some((f) => !e.detail.includes(f.pointer)) ? h("ul", { class: "problem-fields" }, ...e.fields.map((f) => h("li", {}, h("code", {}, f.pointer), ` ${f.detail}`))) : null, e.requestId ? h("span", { class: "problem-request muted" }, `request ${e.requestId}`) : null, h("button", { type: "button", class: "link", "aria-label": "Dismiss this message",
        onclick: () => item.remove() }, "Dismiss"));
    errorRegion.prepend(item);
    while (errorRegion.children.length > 4)
        errorRegion.lastElementChild?.remove();
}
export function clearErrors() {
    errorRegion?.replaceChildren();
}
/** A polite announcement (role=status) of what just happened. */
export function announce(text) {
    if (statusRegion)
        statusRegion.textContent = text;
}
export function badge(kind, text = kind) {
    return h("span", { class: `badge badge-${kind}` }, text);
}
export function mib(v) {
    return v >= 1024 ? `${(v / 1024).toFixed(v % 1024 ? 1 : 0)} GiB` : `${v} MiB`;
}
/** Put `fresh` where `old` is; keyboard focus inside `old` moves to the same `data-key`. */
export function swap(old, fresh) {
    const active = document.activeElement;
    const key = active && old.contains(active) ? active.dataset.key : undefined;
    old.replaceWith(fresh);
    if (key)
        fresh.querySelector(`[data-key="${CSS.escape(key)}"]`)?.focus();
}
/**
 * A container's children kept in step with a list, one element per key. An item whose
 * signature is what it was keeps its element untouched: a press held on one of its
 * buttons survives any number of updates to the others (rebuilding the whole list on
 * every event loses such clicks: the press lands on one button, the release on its copy).
 * A changed item is rebuilt alone, in place.
 */
export class Keyed {
    constructor(container, key, signature, build) {
        this.container = container;
        this.key = key;
        this.signature = signature;
        this.build = build;
        this.kept = new Map();
    }
    update(items) {
        const keys = new Set(items.map(this.key));
        for (const [k, entry] of this.kept) {
            if (!keys.has(k)) {
                entry.el.remove();
                this.kept.delete(k);
            }
        }
        let cursor = this.container.firstChild;
        for (const item of items) {
            const k = this.key(item);
            const sig = this.signature(item);
            let entry = this.kept.get(k);
            if (!entry || entry.sig !== sig) {
                const el = this.build(item);
                if (entry?.el.parentNode === this.container) {
                    if (cursor === entry.el)
                        cursor = el;
                    swap(entry.el, el);
                }
                entry = { el, sig };
                this.kept.set(k, entry);
            }
            // Moved only when out of place: an unchanged order moves nothing.
            if (entry.el === cursor)
                cursor = cursor.nextSibling;
            else
                this.container.insertBefore(entry.el, cursor);
        }
    }
    /** The element kept for a key (for what is updated in place, like a progress bar). */
    get(key) {
        return this.kept.get(key)?.el;
    }
}
