// Renders the reality nodes from the backend API. Uses textContent only, never innerHTML,
// because node names and kinds come from the database.
(() => {
  "use strict";

  const PAGE_SIZE = 50;
  const config = window.REFAPP_CONFIG || {};
  const backendUrl = String(config.backendUrl || "").replace(/\/+$/, "");
  const state = { kind: "", offset: 0, total: 0 };
  const errors = { config: "", stats: "", nodes: "" };
  const byId = (id) => document.getElementById(id);
  const numberFormat = new Intl.NumberFormat("en");

  function renderErrors() {
    byId("error").textContent = Object.values(errors).filter(Boolean).join(" ");
  }

  async function getJson(path) {
    let response;
    try {
      response = await fetch(backendUrl + path, { headers: { Accept: "application/json" } });
    } catch (cause) {
      throw new Error(`The API at ${backendUrl} cannot be reached.`, { cause });
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const reason = body && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
      throw new Error(`The API answered ${response.status}: ${reason}.`);
    }
    return body;
  }

  function renderNode(node) {
    const item = document.createElement("li");
    item.dataset.nodeId = String(node.id);
    const name = document.createElement("span");
    name.className = "node-name";
    name.textContent = node.name;
    const kind = document.createElement("span");
    kind.className = "node-kind";
    kind.textContent = node.kind;
    const meta = document.createElement("span");
    meta.className = "node-meta";
    meta.textContent = node.parent_id === null ? `#${node.id}, root` : `#${node.id}, in #${node.parent_id}`;
    item.append(name, kind, meta);
    return item;
  }

  function renderPager() {
    byId("prev-page").disabled = state.offset === 0;
    byId("next-page").disabled = state.offset + PAGE_SIZE >= state.total;
  }

  async function loadStats() {
    try {
      const stats = await getJson("/api/stats");
      byId("total-nodes").textContent = numberFormat.format(stats.nodes);
      byId("total-edges").textContent = numberFormat.format(stats.edges);
      const select = byId("kind-filter");
      for (const [kind, count] of Object.entries(stats.kinds).sort()) {
        const option = document.createElement("option");
        option.value = kind;
        option.textContent = `${kind} (${numberFormat.format(count)})`;
        select.append(option);
      }
      errors.stats = "";
    } catch (error) {
      byId("total-nodes").textContent = "unknown";
      byId("total-edges").textContent = "unknown";
      errors.stats = `Could not load the totals. ${error.message}`;
    }
    renderErrors();
  }

  async function loadNodes() {
    const list = byId("node-list");
    const status = byId("status");
    const params = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(state.offset) });
    if (state.kind) {
      params.set("kind", state.kind);
    }
    list.setAttribute("aria-busy", "true");
    try {
      const page = await getJson(`/api/reality-nodes?${params}`);
      state.total = page.total;
      list.replaceChildren(...page.items.map(renderNode));
      const what = state.kind ? `${state.kind} nodes` : "nodes";
      status.textContent =
        page.items.length === 0
          ? `No ${what} found.`
          : `Showing ${numberFormat.format(page.offset + 1)}–${numberFormat.format(page.offset + page.items.length)} of ${numberFormat.format(page.total)} ${what}.`;
      errors.nodes = "";
    } catch (error) {
      state.total = 0;
      list.replaceChildren();
      status.textContent = "No nodes to show.";
      errors.nodes = `Could not load the nodes. ${error.message}`;
    } finally {
      list.removeAttribute("aria-busy");
      renderPager();
      renderErrors();
    }
  }

  function changePage(delta) {
    state.offset = Math.max(0, state.offset + delta * PAGE_SIZE);
    loadNodes().then(() => byId("node-list-heading").focus());
  }

  function start() {
    if (!backendUrl) {
      errors.config = "The backend URL is not configured (config.js did not load).";
      renderErrors();
      byId("status").textContent = "No nodes to show.";
      return;
    }
    byId("filter-form").addEventListener("submit", (event) => event.preventDefault());
    byId("kind-filter").addEventListener("change", (event) => {
      state.kind = event.target.value;
      state.offset = 0;
      loadNodes();
    });
    byId("prev-page").addEventListener("click", () => changePage(-1));
    byId("next-page").addEventListener("click", () => changePage(1));
    loadStats();
    loadNodes();
  }

  start();
})();
