/* streamrec storefront widget: plain JavaScript, no build step.
 *
 * Embed:
 *   <div data-streamrec-user="USER_ID"></div>
 *   <script src="https://API_HOST/widget.js" defer></script>
 * or mount by hand: StreamRec.mount(element, {user: "USER_ID", api: "https://API_HOST"}).
 *
 * The widget shows the shopper's latest recommendations with their titles and copy,
 * follows live updates over Server-Sent Events, and reports what the shopper saw and
 * clicked: a `feedback` impression once a list is visible, and a `clicks` event with
 * the list's rec_id when a recommended item is clicked. Data is written with
 * textContent only, never parsed as HTML.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var DEFAULT_API = script && script.src ? new URL(script.src, location.href).origin : location.origin;
  var MAX_ID = 128;

  function newId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    var a = new Uint32Array(4);
    window.crypto.getRandomValues(a);
    return Array.prototype.map.call(a, function (x) { return x.toString(16); }).join("-");
  }

  function validId(s) {
    return typeof s === "string" && s.length > 0 && s.length <= MAX_ID && !/[\x00-\x1f\x7f]/.test(s) && s.trim() !== "";
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function Widget(root, opts) {
    opts = opts || {};
    this.root = root;
    this.api = (opts.api || root.getAttribute("data-streamrec-api") || DEFAULT_API).replace(/\/+$/, "");
    this.user = opts.user || root.getAttribute("data-streamrec-user");
    if (!validId(this.user)) throw new Error("streamrec: invalid user id");
    this.current = null;
    this.impressed = {};
    this.source = null;
    this.observer = null;
    root.classList.add("streamrec");
    root.textContent = "";
    this.headline = root.appendChild(el("h3", "streamrec-headline", opts.title || "Recommended for you"));
    this.body = root.appendChild(el("p", "streamrec-body", ""));
    this.list = root.appendChild(el("ol", "streamrec-items"));
    this.status = root.appendChild(el("p", "streamrec-status", "Loading recommendations\u2026"));
    var self = this;
    this.list.addEventListener("click", function (ev) {
      var li = ev.target.closest ? ev.target.closest("li[data-item-id]") : null;
      if (!li || !self.current) return;
      self.clickRecommended(li.getAttribute("data-item-id"), self.current.rec_id);
    });
  }

  Widget.prototype.post = function (events) {
    return fetch(this.api + "/events", {
      method: "POST", mode: "cors", keepalive: true, credentials: "omit",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(events)
    }).then(function (r) {
      if (!r.ok) throw new Error("streamrec: events refused with HTTP " + r.status);
      return r.json();
    });
  };

  /* A click on any product of the page (not necessarily a recommended one). */
  Widget.prototype.trackClick = function (itemId, recId) {
    if (!validId(itemId)) return Promise.reject(new Error("streamrec: invalid item id"));
    var ev = {topic: "clicks", event_id: newId(), user_id: this.user, item_id: itemId, ts: Date.now() / 1000};
    if (recId) ev.rec_id = recId;
    return this.post([ev]);
  };

  /* A click on a recommended item: a click attributed to the list that showed it. */
  Widget.prototype.clickRecommended = function (itemId, recId) {
    this.root.dispatchEvent(new CustomEvent("streamrec:click", {bubbles: true, detail: {item_id: itemId, rec_id: recId}}));
    return this.trackClick(itemId, recId);
  };

  Widget.prototype.impression = function (rec) {
    if (this.impressed[rec.rec_id]) return;
    this.impressed[rec.rec_id] = true;
    this.root.setAttribute("data-impressed", rec.rec_id);
    this.post([{topic: "feedback", event_id: newId(), user_id: this.user, rec_id: rec.rec_id,
                action: "impression", ts: Date.now() / 1000}]).catch(function () {});
  };

  Widget.prototype.watchVisibility = function (rec) {
    var self = this;
    if (!("IntersectionObserver" in window)) { self.impression(rec); return; }
    if (this.observer) this.observer.disconnect();
    this.observer = new IntersectionObserver(function (entries) {
      for (var i = 0; i < entries.length; i++) {
        if (entries[i].isIntersecting && self.current) { self.impression(self.current); }
      }
    }, {threshold: 0.5});
    this.observer.observe(this.list);
  };

  /* Show a list unless a newer one is already shown; copy for the shown list fills in. */
  Widget.prototype.show = function (kind, rec) {
    if (!rec || !validId(rec.rec_id) || !Array.isArray(rec.items)) return;
    var cur = this.current;
    if (cur && cur.rec_id !== rec.rec_id && Number(rec.ts) < Number(cur.ts)) return;
    if (cur && cur.rec_id === rec.rec_id && cur.copy && !rec.copy) return;
    var fresh = !cur || cur.rec_id !== rec.rec_id;
    this.current = rec;
    this.render(rec);
    if (fresh) this.watchVisibility(rec);
  };

  Widget.prototype.render = function (rec) {
    this.root.setAttribute("data-rec-id", rec.rec_id);
    this.root.setAttribute("data-copy-source", rec.copy && rec.copy.source ? String(rec.copy.source) : "");
    if (rec.copy) {
      this.headline.textContent = rec.copy.headline || "Recommended for you";
      this.body.textContent = rec.copy.body || "";
    } else {
      this.body.textContent = "";
    }
    while (this.list.firstChild) this.list.removeChild(this.list.firstChild);
    for (var i = 0; i < rec.items.length; i++) {
      var it = rec.items[i];
      if (!it || !validId(it.item_id)) continue;
      var li = el("li", "streamrec-item");
      li.setAttribute("data-item-id", it.item_id);
      li.setAttribute("tabindex", "0");
      li.appendChild(el("span", "streamrec-title", it.title || it.item_id));
      if (it.reason) li.appendChild(el("span", "streamrec-reason", it.reason));
      this.list.appendChild(li);
    }
    this.status.textContent = rec.items.length ? "" : "Nothing to recommend yet.";
  };

  Widget.prototype.connect = function () {
    var self = this;
    var base = this.api + "/recommendations/" + encodeURIComponent(this.user);
    fetch(base, {mode: "cors", credentials: "omit"}).then(function (r) {
      if (r.status === 404) { if (!self.current) self.status.textContent = "Browse a little and recommendations appear here."; return null; }
      return r.ok ? r.json() : null;
    }).then(function (rec) { if (rec) self.show(rec.copy ? "copy" : "recommendation", rec); })
      .catch(function () { self.status.textContent = "Recommendations are unavailable right now."; });
    if (!("EventSource" in window)) return this;
    this.source = new EventSource(base + "/stream");
    ["recommendation", "copy"].forEach(function (kind) {
      self.source.addEventListener(kind, function (e) {
        try { self.show(kind, JSON.parse(e.data)); } catch (err) { /* a malformed event is skipped */ }
      });
    });
    this.source.addEventListener("open", function () { self.root.setAttribute("data-live", "1"); });
    this.source.addEventListener("error", function () { self.root.setAttribute("data-live", "0"); });
    return this;
  };

  Widget.prototype.close = function () {
    if (this.source) this.source.close();
    if (this.observer) this.observer.disconnect();
  };

  var StreamRec = {
    widgets: [],
    mount: function (root, opts) {
      var w = new Widget(root, opts).connect();
      StreamRec.widgets.push(w);
      return w;
    },
    mountAll: function () {
      var nodes = document.querySelectorAll("[data-streamrec-user]");
      for (var i = 0; i < nodes.length; i++) {
        if (!nodes[i].classList.contains("streamrec")) StreamRec.mount(nodes[i]);
      }
    }
  };
  window.StreamRec = StreamRec;
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", StreamRec.mountAll);
  else StreamRec.mountAll();
})();
