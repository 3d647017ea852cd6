// Markdown for model output, rendered safely: the text is never parsed as HTML. Every piece
// becomes a DOM node built with createElement and textContent, so `<script>` or
// `<img onerror=…>` in a reply shows as those characters and nothing runs. Links are kept only
// for http(s) URLs. A small subset: paragraphs, headings, lists, fenced and inline code, bold,
// italics, links.

/** Renders `text` into a DocumentFragment. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = text.replace(/\r\n/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const code = [];
      i++;
      while (i < lines.length && !lines[i].startsWith("```")) code.push(lines[i++]);
      i++; // the closing fence, if any
      const pre = element("pre");
      pre.appendChild(element("code", code.join("\n")));
      fragment.appendChild(pre);
      continue;
    }
    const heading = /^(#{1,3})\s+(.*)$/.exec(line);
    if (heading) {
      const h = element(`h${heading[1].length + 2}`);
      appendInline(h, heading[2]);
      fragment.appendChild(h);
      i++;
      continue;
    }
    const listItem = /^\s*([-*]|\d+\.)\s+/;
    if (listItem.test(line)) {
      const ordered = /^\s*\d+\./.test(line);
      const list = element(ordered ? "ol" : "ul");
      while (i < lines.length && listItem.test(lines[i])) {
        const li = element("li");
        appendInline(li, lines[i].replace(listItem, ""));
        list.appendChild(li);
        i++;
      }
      fragment.appendChild(list);
      continue;
    }
    if (line.trim() === "") {
      i++;
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() !== "" && !lines[i].startsWith("```") && !listItem.test(lines[i])
           && !/^#{1,3}\s/.test(lines[i])) {
      paragraph.push(lines[i++]);
    }
    const p = element("p");
    appendInline(p, paragraph.join("\n"));
    fragment.appendChild(p);
  }
  return fragment;
}

function element(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Inline spans: `code`, **bold**, *italic* or _italic_, [text](http…). Anything else is text.
// Underscores emphasise only at word edges, as in CommonMark: snake_case_names stay as written.
const INLINE = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|(?<![\p{L}\p{N}_])_([^_\s][^_]*)_(?![\p{L}\p{N}_])|\[([^\]]+)\]\(([^)\s]+)\)/gu;

function appendInline(parent, text) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) appendText(parent, text.slice(last, match.index));
    const [whole, code, bold, italic, underscored, label, url] = match;
    if (code !== undefined) parent.appendChild(element("code", code));
    else if (bold !== undefined) parent.appendChild(element("strong", bold));
    else if (italic !== undefined || underscored !== undefined) parent.appendChild(element("em", italic ?? underscored));
    else if (label !== undefined) {
      if (/^https?:\/\//i.test(url)) {
        const a = element("a", label);
        a.href = url;
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        parent.appendChild(a);
      } else {
        appendText(parent, whole); // not a web link: shown as written
      }
    }
    last = match.index + whole.length;
  }
  if (last < text.length) appendText(parent, text.slice(last));
}

// Text with its line breaks kept.
function appendText(parent, text) {
  text.split("\n").forEach((piece, n) => {
    if (n > 0) parent.appendChild(document.createElement("br"));
    parent.appendChild(document.createTextNode(piece));
  });
}
