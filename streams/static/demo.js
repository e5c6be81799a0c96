/* The demo storefront: catalog products from /catalog, each click reported as a clicks
 * event; the widget beside them shows the shopper's recommendations live. */
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var user = params.get("user");
  if (!user || user.length > 128 || /[\x00-\x1f\x7f]/.test(user)) {
    try { user = localStorage.getItem("streamrec-demo-user"); } catch (e) { user = null; }
    if (!user) {
      user = "shopper-" + Math.random().toString(36).slice(2, 10);
      try { localStorage.setItem("streamrec-demo-user", user); } catch (e) { /* private mode */ }
    }
  }
  document.getElementById("shopper").textContent = user;
  var widget = StreamRec.mount(document.getElementById("recommendations"), {user: user, api: location.origin});
  var catalog = document.getElementById("catalog");
  var status = document.getElementById("catalog-status");

  function card(item) {
    var li = document.createElement("li");
    li.className = "product";
    var button = document.createElement("button");
    button.type = "button";
    button.setAttribute("data-item-id", item.item_id);
    var title = document.createElement("span");
    title.className = "product-title";
    title.textContent = item.title || item.item_id;
    var meta = document.createElement("span");
    meta.className = "product-meta";
    meta.textContent = [item.category, typeof item.price === "number" ? item.price.toFixed(2) + " \u20ac" : ""]
      .filter(Boolean).join(" \u00b7 ");
    button.appendChild(title);
    button.appendChild(meta);
    button.addEventListener("click", function () {
      li.classList.add("viewed");
      widget.trackClick(item.item_id).then(function () {
        status.textContent = "Viewed " + (item.title || item.item_id) + ".";
      }).catch(function () { status.textContent = "Could not record that click."; });
    });
    li.appendChild(button);
    return li;
  }

  fetch("catalog?limit=24").then(function (r) { return r.json(); }).then(function (data) {
    var items = (data && data.items) || [];
    items.forEach(function (item) { catalog.appendChild(card(item)); });
    status.textContent = items.length ? "" : "The catalog is empty.";
  }).catch(function () { status.textContent = "The catalog is unavailable."; });
})();
