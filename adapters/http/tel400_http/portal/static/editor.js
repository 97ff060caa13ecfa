/* The routing editor's rules move up and down without a round trip (pages/editor.py).
 * Without this script the same buttons are form submits and the server moves the rule; with it,
 * the rule's <li> is moved and every rules.N name, id and button value is renumbered, so the form
 * posts exactly what the server-side move would have drawn.  Rules can also be dragged. */
(function () {
  "use strict";
  var list = document.querySelector("ol.rules");
  if (!list) { return; }
  var ATTRS = ["name", "id", "for", "aria-describedby", "value"];

  function renumber() {
    var items = list.querySelectorAll(":scope > li.rule");
    items.forEach(function (li, j) {
      var old = li.getAttribute("data-index");
      if (old !== String(j)) {
        var dot = new RegExp("(^|[:\\s])rules\\." + old + "(?=\\.|$)", "g");
        var dash = new RegExp("(^|\\s|err-)rules-" + old + "-", "g");
        li.querySelectorAll("*").forEach(function (el) {
          ATTRS.forEach(function (a) {
            var v = el.getAttribute(a);
            if (v === null || (a === "value" && el.tagName !== "BUTTON")) { return; }
            var w = v.replace(dot, "$1rules." + j).replace(dash, "$1rules-" + j + "-");
            if (w !== v) { el.setAttribute(a, w); }
          });
        });
        li.id = "rule-" + j;
        li.setAttribute("data-index", String(j));
      }
      var n = li.querySelector("legend .n");
      if (n) { n.textContent = String(j + 1); }
      li.querySelector("button.up").disabled = j === 0;
      li.querySelector("button.down").disabled = j === items.length - 1;
    });
  }

  list.addEventListener("click", function (event) {
    var button = event.target.closest("button.up, button.down");
    if (!button) { return; }
    var li = button.closest("li.rule");
    event.preventDefault();
    if (button.classList.contains("up") && li.previousElementSibling) {
      list.insertBefore(li, li.previousElementSibling);
    } else if (button.classList.contains("down") && li.nextElementSibling) {
      list.insertBefore(li.nextElementSibling, li);
    }
    renumber();
    button.focus();
  });

  var dragged = null;
  list.addEventListener("dragstart", function (event) {
    dragged = event.target.closest("li.rule");
  });
  list.addEventListener("dragover", function (event) {
    if (dragged) { event.preventDefault(); }
  });
  list.addEventListener("drop", function (event) {
    var target = event.target.closest("li.rule");
    if (!dragged || !target || target === dragged) { return; }
    event.preventDefault();
    var rect = target.getBoundingClientRect();
    list.insertBefore(dragged, event.clientY > rect.top + rect.height / 2 ? target.nextElementSibling : target);
    dragged = null;
    renumber();
  });
}());
