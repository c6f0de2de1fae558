// A small, safe Markdown renderer for model output (untrusted text).
//
// It builds DOM nodes and sets only textContent and whitelisted attributes: no HTML in
// the text is ever parsed (`<script>`, `<img onerror>` stay text), and links keep their
// target only for http(s) and mailto URLs (`javascript:` and the rest render as text).
// Supported: fenced code blocks (```lang), indented code, headings, paragraphs, line
// breaks, block quotes, ordered and unordered lists, horizontal rules, and inline code,
// **bold**, *italic* / _italic_, ~~strike~~ and [links](url). Unfinished constructs (a
// fence not yet closed while streaming) render as what they are so far.

const SAFE_URL = /^(https?:\/\/|mailto:)/i;

/** Appends the inline content of `text` to `parent`. */
function inline(parent, text) {
  const patterns = [
    { re: /`([^`\n]+)`/, make: (m) => el("code", m[1]) },
    { re: /\*\*([^*\n]+)\*\*/, make: (m) => withInline("strong", m[1]) },
    { re: /__([^_\n]+)__/, make: (m) => withInline("strong", m[1]) },
    { re: /~~([^~\n]+)~~/, make: (m) => withInline("del", m[1]) },
    { re: /\*([^*\n]+)\*/, make: (m) => withInline("em", m[1]) },
    { re: /(^|[^\w])_([^_\n]+)_(?!\w)/, make: (m) => withInline("em", m[2]), lead: 1 },
    { re: /\[([^\]\n]+)\]\(([^)\s]+)\)/, make: (m) => link(m[1], m[2]) },
  ];
  let rest = text;
  while (rest.length > 0) {
    let best = null;
    for (const p of patterns) {
      const m = p.re.exec(rest);
      if (m && (best === null || m.index < best.m.index)) best = { p, m };
    }
    if (best === null) {
      parent.appendChild(document.createTextNode(rest));
      return;
    }
    const lead = best.p.lead ? best.m[best.p.lead].length : 0;
    const start = best.m.index + lead;
    if (start > 0) parent.appendChild(document.createTextNode(rest.slice(0, start)));
    parent.appendChild(best.p.make(best.m));
    rest = rest.slice(best.m.index + best.m[0].length);
  }
}

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

function withInline(tag, text) {
  const node = document.createElement(tag);
  inline(node, text);
  return node;
}

function link(label, url) {
  if (!SAFE_URL.test(url)) {
    return document.createTextNode(`[${label}](${url})`);
  }
  const a = document.createElement("a");
  a.href = url;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  a.textContent = label;
  return a;
}

/** Appends `lines` as a paragraph (lines joined with <br>). */
function paragraph(parent, lines) {
  const p = document.createElement("p");
  lines.forEach((line, i) => {
    if (i > 0) p.appendChild(document.createElement("br"));
    inline(p, line);
  });
  parent.appendChild(p);
}

function codeBlock(parent, lang, lines, onCopy) {
  const wrap = el("div");
  wrap.className = "code";
  const bar = el("div");
  bar.className = "code-bar";
  bar.appendChild(el("span", lang || "code"));
  const code = el("code", lines.join("\n"));
  if (onCopy) {
    const copy = el("button", "Copy");
    copy.type = "button";
    copy.className = "code-copy";
    copy.addEventListener("click", () => onCopy(code.textContent, copy));
    bar.appendChild(copy);
  }
  const pre = el("pre");
  pre.appendChild(code);
  wrap.append(bar, pre);
  parent.appendChild(wrap);
}

const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;

/** Consumes list lines from `lines[i]` on; returns the next index. */
function list(parent, lines, i) {
  const ordered = /\d/.test(LIST_ITEM.exec(lines[i])[2]);
  const node = el(ordered ? "ol" : "ul");
  while (i < lines.length) {
    const m = LIST_ITEM.exec(lines[i]);
    if (!m || /\d/.test(m[2]) !== ordered) break;
    const li = el("li");
    inline(li, m[3]);
    node.appendChild(li);
    i += 1;
  }
  parent.appendChild(node);
  return i;
}

/**
 * Replaces the content of `container` with `text` rendered as Markdown. `onCopy(text,
 * button)` is called by the copy button of a code block.
 */
export function renderMarkdown(container, text, onCopy) {
  container.replaceChildren();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let para = [];
  const flush = () => {
    if (para.length) paragraph(container, para);
    para = [];
  };
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = /^\s*(```+|~~~+)\s*([\w+#.-]*)\s*$/.exec(line);
    if (fence) {
      flush();
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) {
        body.push(lines[i]);
        i += 1;
      }
      codeBlock(container, fence[2], body, onCopy);
      i += 1;
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) {
      flush();
      container.appendChild(withInline(`h${Math.min(heading[1].length + 2, 6)}`, heading[2]));
    } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      container.appendChild(el("hr"));
    } else if (LIST_ITEM.test(line)) {
      flush();
      i = list(container, lines, i);
      continue;
    } else if (/^\s*>/.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) {
        quoted.push(lines[i].replace(/^\s*>\s?/, ""));
        i += 1;
      }
      const q = el("blockquote");
      renderMarkdown(q, quoted.join("\n"), onCopy);
      container.appendChild(q);
      continue;
    } else if (/^( {4}|\t)/.test(line) && para.length === 0) {
      const body = [];
      while (i < lines.length && (/^( {4}|\t)/.test(lines[i]) || lines[i].trim() === "")) {
        body.push(lines[i].replace(/^( {4}|\t)/, ""));
        i += 1;
      }
      while (body.length && body[body.length - 1].trim() === "") body.pop();
      codeBlock(container, "", body, onCopy);
      continue;
    } else if (line.trim() === "") {
      flush();
    } else {
      para.push(line);
    }
    i += 1;
  }
  flush();
}
