// tessera chat: the page's logic. One WebSocket to /v1/chat/ws (protocol:
// docs/websocket.md); conversations live on the server, so a reload or a reconnect
// finds them again. Model output is rendered by markdown.js (DOM nodes and textContent
// only); nothing here ever assigns HTML.

import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"), list: $("conversations"), newChat: $("new-chat"), menu: $("menu"),
  model: $("model"), dot: $("status-dot"), status: $("status"), theme: $("theme"),
  keyButton: $("key-button"), keyForm: $("key-form"), keyInput: $("key-input"), keyNote: $("key-note"),
  messages: $("messages"), composer: $("composer"), input: $("input"), counter: $("counter"),
  send: $("send"), stop: $("stop"),
};

const state = {
  ws: null, ready: false, backoff: 500, maxChars: null, nextId: 1,
  conversations: [], current: localStorage.getItem("tessera.conversation") || null,
  generations: new Map(), // generation id -> view of the answer being streamed
  byConversation: new Map(), // conversation id -> generation id running in it
  pending: new Map(), // request id -> callback for the answer
  queued: null, // a message typed before a conversation existed
};

// ---- theme -------------------------------------------------------------------------
function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
}
applyTheme(localStorage.getItem("tessera.theme"));
ui.theme.addEventListener("click", () => {
  const dark = document.documentElement.dataset.theme === "dark" ||
    (!document.documentElement.dataset.theme && matchMedia("(prefers-color-scheme: dark)").matches);
  const theme = dark ? "light" : "dark";
  localStorage.setItem("tessera.theme", theme);
  applyTheme(theme);
});
ui.menu.addEventListener("click", () => ui.sidebar.classList.toggle("open"));

// ---- connection --------------------------------------------------------------------
function setStatus(text, on) {
  ui.status.textContent = text;
  ui.dot.classList.toggle("on", !!on);
}

function request(type, fields = {}, waiting) {
  const id = String(state.nextId++);
  if (waiting !== undefined) state.pending.set(id, waiting);
  return send({ ...fields, type, request_id: id });
}

function send(message) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
  state.ws.send(JSON.stringify(message));
  return true;
}

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/chat/ws`;
  setStatus("connecting…");
  const ws = new WebSocket(url, ["tessera.chat.v1"]);
  state.ws = ws;
  ws.addEventListener("open", () => {
    send({ type: "auth", api_key: localStorage.getItem("tessera.key") || "" });
  });
  ws.addEventListener("message", (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    handle(msg);
  });
  ws.addEventListener("close", (ev) => {
    state.ready = false;
    for (const view of state.generations.values()) endView(view, "connection lost");
    state.generations.clear();
    state.byConversation.clear();
    updateComposer();
    if (ev.code === 4401) {
      setStatus("API key needed");
      showKeyForm(ev.reason);
      return;
    }
    setStatus(`disconnected (${ev.code}${ev.reason ? ": " + ev.reason : ""}); reconnecting…`);
    setTimeout(connect, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 10000);
  });
}

function showKeyForm(reason) {
  ui.keyForm.hidden = false;
  ui.keyNote.textContent = reason || "";
  ui.keyInput.focus();
}
ui.keyButton.addEventListener("click", () => showKeyForm(""));
ui.keyForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem("tessera.key", ui.keyInput.value.trim());
  ui.keyInput.value = "";
  ui.keyForm.hidden = true;
  if (state.ws) state.ws.close();
  if (!state.ws || state.ws.readyState === WebSocket.CLOSED) connect();
});

// ---- server messages ---------------------------------------------------------------
// `state.pending` maps a request id to what waits for its answer: a callback, or the
// view of an answer that a `message.send` / `message.regenerate` will stream into.
function take(id) {
  const waiting = id ? state.pending.get(id) : undefined;
  if (waiting !== undefined) state.pending.delete(id);
  return waiting;
}

function handle(msg) {
  switch (msg.type) {
    case "ready": return onReady(msg);
    case "conversation.list": take(msg.request_id); return showList(msg.conversations);
    case "conversation.created":
    case "conversation.renamed":
    case "conversation.deleted":
    case "conversation.history":
    case "feedback.recorded":
    case "pong": {
      const callback = take(msg.request_id);
      return typeof callback === "function" ? callback(msg) : undefined;
    }
    case "generation.started": return onStarted(msg);
    case "delta": return onDelta(msg);
    case "generation.done": return onDone(msg);
    case "moderation.blocked": return onBlocked(msg);
    case "error": return onError(msg);
    default: return undefined;
  }
}

function onReady(msg) {
  const first = !state.ready;
  state.ready = true;
  state.backoff = 500;
  state.maxChars = msg.max_input_chars;
  ui.model.textContent = msg.model || "model";
  setStatus("connected", true);
  updateComposer();
  if (first) {
    request("conversation.list");
    if (state.current) openConversation(state.current);
  }
}

function onError(msg) {
  const waiting = take(msg.request_id);
  const view = (msg.generation_id && state.generations.get(msg.generation_id)) ||
    (waiting && waiting.bubble ? waiting : null);
  const text = msg.error ? msg.error.message : "error";
  if (view) {
    endView(view, text);
    if (msg.generation_id) forget(msg.generation_id, msg.conversation_id);
  } else if (typeof waiting === "function") {
    waiting(msg);
  } else {
    setStatus(text);
  }
  updateComposer();
}

// ---- conversations -----------------------------------------------------------------
function showList(conversations) {
  state.conversations = conversations;
  ui.list.replaceChildren();
  for (const c of conversations) ui.list.appendChild(listItem(c));
  if (state.current && !conversations.some((c) => c.id === state.current)) {
    selectConversation(null);
  }
}

function listItem(c) {
  const li = document.createElement("li");
  li.dataset.id = c.id;
  li.classList.toggle("active", c.id === state.current);
  const title = document.createElement("button");
  title.type = "button";
  title.className = "title";
  title.textContent = c.title || "New chat";
  title.title = c.title || "New chat";
  title.addEventListener("click", () => openConversation(c.id));
  const rename = actButton("✎", "Rename", () => startRename(li, c));
  const del = actButton("×", "Delete", () => {
    if (confirm(`Delete “${c.title || "New chat"}”?`)) {
      request("conversation.delete", { id: c.id }, () => request("conversation.list"));
    }
  });
  li.append(title, rename, del);
  return li;
}

function actButton(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "act";
  b.textContent = text;
  b.title = label;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function startRename(li, c) {
  const input = document.createElement("input");
  input.value = c.title || "";
  input.setAttribute("aria-label", "Title");
  li.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    if (save && input.value.trim()) {
      request("conversation.rename", { id: c.id, title: input.value }, () => request("conversation.list"));
    } else {
      showList(state.conversations);
    }
  };
  input.addEventListener("keydown", (ev) => {
    if (ev.isComposing || ev.keyCode === 229) return;
    if (ev.key === "Enter") finish(true);
    if (ev.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
}

function selectConversation(id) {
  state.current = id;
  if (id) localStorage.setItem("tessera.conversation", id);
  else localStorage.removeItem("tessera.conversation");
  for (const li of ui.list.children) li.classList.toggle("active", li.dataset.id === id);
  ui.sidebar.classList.remove("open");
  updateComposer();
}

function openConversation(id) {
  selectConversation(id);
  request("conversation.open", { id }, (msg) => {
    if (msg.type === "error") {
      selectConversation(null);
      ui.messages.replaceChildren();
      return;
    }
    if (state.current !== id) return;
    showHistory(msg.items);
  });
}

function showHistory(items) {
  ui.messages.replaceChildren();
  if (!items.length) showEmpty();
  items.forEach((item, i) => {
    if (item.role === "user") addUser(item.text);
    else if (item.role === "assistant") {
      const view = addAssistant();
      view.text = item.text;
      view.responseId = item.response_id;
      renderView(view);
      finishView(view, { incomplete: !item.complete, last: i === items.length - 1 });
    }
  });
  const running = state.byConversation.get(state.current);
  if (running) ui.messages.appendChild(state.generations.get(running).root);
  scrollDown();
}

function showEmpty() {
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = "Ask anything.";
  ui.messages.appendChild(p);
}

function newConversation(then) {
  request("conversation.create", { title: "" }, (msg) => {
    if (msg.type === "error") return setStatus(msg.error.message);
    state.conversations.unshift(msg.conversation);
    ui.list.prepend(listItem(msg.conversation));
    selectConversation(msg.conversation.id);
    ui.messages.replaceChildren();
    showEmpty();
    request("conversation.list");
    if (then) then(msg.conversation.id);
  });
}
ui.newChat.addEventListener("click", () => newConversation());

// ---- messages ----------------------------------------------------------------------
function scrollDown() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function addUser(text) {
  ui.messages.querySelector(".empty")?.remove();
  const root = document.createElement("div");
  root.className = "msg user";
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  root.appendChild(bubble);
  ui.messages.appendChild(root);
  return root;
}

function addAssistant() {
  ui.messages.querySelector(".empty")?.remove();
  const root = document.createElement("div");
  root.className = "msg assistant";
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  const meta = document.createElement("div");
  meta.className = "meta";
  const stats = document.createElement("span");
  stats.className = "stats";
  meta.appendChild(stats);
  root.append(bubble, meta);
  ui.messages.appendChild(root);
  return { root, bubble, meta, stats, text: "", tokens: 0, started: 0, first: 0, frame: 0 };
}

function appendError(text) {
  const view = addAssistant();
  endView(view, text);
}

function copyText(text, button) {
  const done = () => { const old = button.textContent; button.textContent = "Copied"; setTimeout(() => { button.textContent = old; }, 1200); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text) && done());
  } else if (fallbackCopy(text)) done();
}

function fallbackCopy(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch { ok = false; }
  area.remove();
  return ok;
}

function renderView(view) {
  view.frame = 0;
  renderMarkdown(view.bubble, view.text, copyText);
}

function scheduleRender(view) {
  if (!view.frame) view.frame = requestAnimationFrame(() => { renderView(view); scrollDown(); });
}

/** Shows `text` (an error or a moderation message) in place of the answer. */
function endView(view, text, blocked) {
  view.bubble.classList.remove("cursor");
  view.root.classList.toggle("blocked", !!blocked);
  view.bubble.replaceChildren();
  const p = document.createElement("p");
  if (!blocked) p.className = "error";
  p.textContent = text;
  view.bubble.appendChild(p);
}

function liveStats(view) {
  const parts = [];
  if (view.first) parts.push(`TTFT ${Math.round(view.first - view.started)} ms`);
  const elapsed = (performance.now() - view.first) / 1000;
  if (view.tokens > 1 && elapsed > 0) parts.push(`${((view.tokens - 1) / elapsed).toFixed(1)} tok/s`);
  parts.push(`${view.tokens} tokens`);
  view.stats.textContent = parts.join(" · ");
}

/** Adds the answer's buttons (copy, rating, regenerate on the last answer). */
function finishView(view, { incomplete, last }) {
  view.bubble.classList.remove("cursor");
  if (incomplete) view.stats.textContent ||= "(incomplete)";
  const copy = metaButton(view, "Copy", "Copy the answer", (b) => copyText(view.text, b));
  const up = metaButton(view, "▲ Good", "Good answer", () => rate(view, "up", up, down));
  const down = metaButton(view, "▼ Bad", "Bad answer", () => rate(view, "down", down, up));
  if (!view.responseId) { up.disabled = true; down.disabled = true; }
  view.meta.append(copy, up, down);
  if (last) {
    const again = metaButton(view, "↻ Regenerate", "Answer again", () => regenerate());
    again.className = "regenerate";
    view.meta.appendChild(again);
  }
}

function metaButton(view, text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.title = label;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", () => onClick(b));
  return b;
}

function rate(view, rating, button, other) {
  request("feedback", { response_id: view.responseId, rating }, (msg) => {
    if (msg.type === "error") return setStatus(msg.error.message);
    button.classList.add("on");
    other.classList.remove("on");
    if (view.root.querySelector(".comment")) return;
    const form = document.createElement("form");
    form.className = "comment";
    const input = document.createElement("input");
    input.placeholder = "Add a comment (optional)";
    input.maxLength = 2000;
    const ok = document.createElement("button");
    ok.type = "submit";
    ok.textContent = "Send";
    form.append(input, ok);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      request("feedback", { response_id: view.responseId, rating, comment: input.value }, () => form.remove());
    });
    view.root.appendChild(form);
  });
}

// ---- generations -------------------------------------------------------------------
function startView(conversationId) {
  const view = addAssistant();
  view.conversation = conversationId;
  view.started = performance.now();
  view.bubble.classList.add("cursor");
  return view;
}

function onStarted(msg) {
  const view = take(msg.request_id);
  if (!view || !view.bubble) return;
  view.responseId = msg.response_id;
  state.generations.set(msg.generation_id, view);
  state.byConversation.set(msg.conversation_id, msg.generation_id);
  updateComposer();
}

function onDelta(msg) {
  const view = state.generations.get(msg.generation_id);
  if (!view) return;
  if (!view.first) view.first = performance.now();
  view.text += msg.text;
  view.tokens = msg.tokens;
  liveStats(view);
  scheduleRender(view);
}

function onDone(msg) {
  const view = state.generations.get(msg.generation_id);
  forget(msg.generation_id, msg.conversation_id);
  updateComposer();
  if (!view) return;
  if (view.frame) cancelAnimationFrame(view.frame);
  if (!view.blocked) renderView(view);
  const parts = [];
  if (msg.ttft_ms != null) parts.push(`TTFT ${Math.round(msg.ttft_ms)} ms`);
  if (msg.tokens_per_second != null) parts.push(`${msg.tokens_per_second} tok/s`);
  parts.push(`${msg.usage.output_tokens} tokens`);
  if (msg.finish_reason !== "stop") parts.push(msg.finish_reason);
  view.stats.textContent = parts.join(" · ");
  ui.messages.querySelectorAll(".regenerate").forEach((b) => b.remove());
  finishView(view, { incomplete: msg.finish_reason === "cancelled", last: msg.conversation_id === state.current });
  scrollDown();
}

function onBlocked(msg) {
  const waiting = take(msg.request_id);
  const view = (msg.generation_id && state.generations.get(msg.generation_id)) ||
    (waiting && waiting.bubble ? waiting : null);
  if (!view) return;
  view.blocked = true;
  endView(view, msg.message, true);
  if (msg.stage === "input") view.stats.textContent = "blocked by the content policy";
}

function forget(generationId, conversationId) {
  state.generations.delete(generationId);
  if (state.byConversation.get(conversationId) === generationId) state.byConversation.delete(conversationId);
}

function regenerate() {
  const id = state.current;
  if (!id || state.byConversation.has(id)) return;
  const answers = ui.messages.querySelectorAll(".msg.assistant");
  answers[answers.length - 1]?.remove();
  request("message.regenerate", { conversation_id: id }, startView(id));
}

function sendMessage(text) {
  const id = state.current;
  if (!id) {
    newConversation(() => sendMessage(text));
    return;
  }
  const conv = state.conversations.find((c) => c.id === id);
  if (conv && !conv.title) {
    conv.title = text.slice(0, 60);
    request("conversation.rename", { id, title: conv.title }, () => request("conversation.list"));
  }
  addUser(text);
  request("message.send", { conversation_id: id, text }, startView(id));
  scrollDown();
}

// ---- composer ----------------------------------------------------------------------
function chars(text) {
  return [...text].length;
}

function updateComposer() {
  const n = chars(ui.input.value);
  const max = state.maxChars;
  ui.counter.textContent = max ? `${n} / ${max}` : `${n}`;
  const over = max != null && n > max;
  ui.counter.classList.toggle("over", over);
  const running = state.current && state.byConversation.has(state.current);
  ui.stop.hidden = !running;
  ui.send.disabled = !state.ready || over || running || ui.input.value.trim() === "";
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight + 2, window.innerHeight * 0.4)}px`;
}

function submit() {
  updateComposer();
  if (ui.send.disabled) return;
  const text = ui.input.value;
  ui.input.value = "";
  updateComposer();
  sendMessage(text);
}

ui.input.addEventListener("input", updateComposer);
ui.input.addEventListener("keydown", (ev) => {
  // An IME composing Chinese (or any language) uses Enter to pick its candidate.
  if (ev.isComposing || ev.keyCode === 229) return;
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    submit();
  }
});
ui.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  submit();
});
ui.stop.addEventListener("click", () => {
  const gen = state.byConversation.get(state.current);
  if (gen) send({ type: "generation.stop", generation_id: gen });
});

updateComposer();
connect();
