// The dashboard: follows the page URL's topic patterns on GET /v1/stream with the browser's own EventSource.
//
// It opens with the latest reading of every matching topic and the last 10 minutes of history
// (snapshot=latest&since=-10m), then goes on live; the browser reconnects by itself and sends Last-Event-ID.
// Readings update the data at once and the page in animation frames (requestAnimationFrame): a frame draws
// what changed since the last one, each chart at most every CHART_REDRAW_MS and only while it is on screen.
// No framework, no build step: uPlot (vendored beside this file) draws the charts.
"use strict";

(() => {
  const WINDOW_MS = 10 * 60 * 1000;
  const WINDOW_QUERY = "-10m"; // the same window, as the stream's since=
  const BUCKET_MS = 500; // one point per topic and half second (the latest): at most 1,200 points per chart
  const CHART_REDRAW_MS = 1000; // 10 minutes on a chart 300-600 px wide: a pixel is a second or more
  const CHARTS_PER_FRAME = 6; // charts made or redrawn in one frame, at most
  const MAX_CHARTS = 200; // more topics than that are in the table only
  const CHART_HEIGHT_PX = 150;
  const MIN_CHART_WIDTH_PX = 200;
  const MAX_NOTICES = 5; // on the page
  const MAX_KEPT_NOTICES = 100; // in the test hook
  const MAX_RECEIVED = 200000; // the test hook's list of seqs keeps the latest ones (receivedDropped counts the rest)
  const MAX_KEPT_DRAWS = 1000; // chart redraws kept in the test hook
  const RETRY_MS = [1000, 2000, 5000, 10000]; // our own retries, after a stream refused for a reason that passes
  const DEFAULT_PATTERN = ">";
  const COLOURS = ["#1f5fbf", "#b3261e", "#1d7a35", "#8a4baf", "#a05a00", "#00727a", "#5a5a5a", "#c2185b"];

  const $ = (id) => document.getElementById(id);
  const view = {
    state: $("state"),
    lastId: $("last-id"),
    patternList: $("pattern-list"),
    topicForm: $("topics"),
    tokenForm: $("token-form"),
    token: $("token"),
    tokenReason: $("token-reason"),
    tokenError: $("token-error"),
    forgetToken: $("forget-token"),
    notices: $("notices"),
    rows: document.querySelector("#latest tbody"),
    empty: $("empty"),
    charts: $("charts"),
    tooMany: $("too-many"),
  };

  const page = {
    patterns: [],
    source: null,
    state: "connecting",
    lastEventId: null,
    received: [],
    receivedDropped: 0,
    shownAt: [], // beside received: when the frame that wrote each one to the table ended (null until then)
    unshown: 0, // the index in received of the first one no frame has shown yet
    chartDraws: [],
    notices: [],
    topics: new Map(), // topic -> Topic
    fresh: [], // topics that have data but no row and chart yet
    placed: [], // topics with a row, in topic order
    charted: 0, // topics with a chart (at most MAX_CHARTS)
    retries: 0,
    retryTimer: null,
    clockOffsetMs: 0, // how far the service's clock is ahead of ours, at least (seen on live readings)
    frameRequested: false,
    headerDirty: true,
    agesDue: false,
    inputsMade: 0,
  };

  // ---- the URL's patterns and the form that edits them

  function patternsFromUrl() {
    const given = new URLSearchParams(location.search).getAll("topic").map((p) => p.trim()).filter(Boolean);
    return given.length ? given : [DEFAULT_PATTERN];
  }

  function addPatternInput(value) {
    const index = view.patternList.children.length + 1;
    const item = document.createElement("li");
    const label = document.createElement("label");
    const input = document.createElement("input");
    const remove = document.createElement("button");
    page.inputsMade += 1;
    input.id = `pattern-input-${page.inputsMade}`;
    input.name = "topic";
    input.value = value;
    input.autocomplete = "off";
    input.spellcheck = false;
    input.setAttribute("aria-describedby", "pattern-hint");
    label.htmlFor = input.id;
    label.textContent = `Pattern ${index}`;
    remove.type = "button";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove pattern ${index}`);
    remove.addEventListener("click", () => {
      item.remove();
      renumberPatterns();
      const inputs = view.patternList.querySelectorAll("input");
      if (inputs.length) inputs[inputs.length - 1].focus();
      else document.getElementById("add-pattern").focus();
    });
    item.append(label, input, remove);
    view.patternList.append(item);
    return input;
  }

  function renumberPatterns() {
    view.patternList.querySelectorAll("li").forEach((item, i) => {
      item.querySelector("label").textContent = `Pattern ${i + 1}`;
      item.querySelector("button").setAttribute("aria-label", `Remove pattern ${i + 1}`);
    });
  }

  function showPatterns(patterns) {
    view.patternList.replaceChildren();
    patterns.forEach(addPatternInput);
  }

  function follow(event) {
    event.preventDefault();
    const inputs = [...view.patternList.querySelectorAll("input")];
    const patterns = inputs.map((input) => input.value.trim()).filter(Boolean);
    page.patterns = patterns.length ? [...new Set(patterns)] : [DEFAULT_PATTERN];
    if (page.patterns.length !== inputs.length || page.patterns.some((p, i) => p !== inputs[i].value)) {
      showPatterns(page.patterns); // blanks and repeats gone (the focus goes with them: to the first pattern)
      view.patternList.querySelector("input").focus();
    }
    const query = new URLSearchParams(page.patterns.map((p) => ["topic", p]));
    history.replaceState(null, "", `${location.pathname}?${query}`);
    clearView();
    connect(null, "connecting");
  }

  // ---- the stream

  function streamUrl(resumeAfter) {
    const query = new URLSearchParams(page.patterns.map((p) => ["topic", p]));
    if (resumeAfter === null) {
      query.set("snapshot", "latest");
      query.set("since", WINDOW_QUERY);
    } else {
      query.set("last_event_id", resumeAfter); // never with since/snapshot: resuming is exact by itself
    }
    return `/v1/stream?${query}`;
  }

  function connect(resumeAfter, state = "reconnecting") {
    closeSource();
    setState(state);
    const source = new EventSource(streamUrl(resumeAfter), { withCredentials: true });
    page.source = source;
    const mine = (handler) => (event) => {
      if (page.source === source) handler(event, source);
    };
    source.addEventListener("open", mine(() => {
      page.retries = 0;
      setState("live");
    }));
    source.addEventListener("reading", mine(onReading));
    source.addEventListener("reset", mine(onReset));
    source.addEventListener("end", mine(onEnd));
    source.addEventListener("error", mine((event, source) => {
      // A non-200 answer closes an EventSource for good, without telling why; a dropped connection does not.
      if (source.readyState === EventSource.CLOSED) refused();
      else setState("reconnecting");
    }));
  }

  function closeSource() {
    if (page.source) page.source.close();
    page.source = null;
    clearTimeout(page.retryTimer);
  }

  async function refused() {
    // Ask the same question with fetch, which tells the status: a token to ask for, a request to fix, or a wait.
    closeSource();
    setState("reconnecting");
    const url = streamUrl(page.lastEventId);
    const controller = new AbortController();
    let status = 0;
    let message = "";
    try {
      const answer = await fetch(url, { credentials: "same-origin", signal: controller.signal });
      status = answer.status;
      if (status !== 200) message = errorMessage(await answer.json().catch(() => null));
    } catch (err) {
      status = 0; // the service is not there (yet)
    } finally {
      controller.abort(); // a 200 is a stream: we only wanted its status
    }
    if (page.source !== null) return; // something else reconnected meanwhile (a new token, new patterns)
    if (status === 401 || status === 403) {
      askForToken(status === 401 ? "The stream service wants a token." : `Refused: ${message}`);
    } else if (status === 400 || status === 404) {
      setState("stopped");
      notice("error", `The stream refused these patterns: ${message || status}. Change them above.`);
    } else {
      // Not ready yet (503), not there (a restart), or open again by now (200): come back after a while.
      const delay = RETRY_MS[Math.min(page.retries, RETRY_MS.length - 1)];
      page.retries += 1;
      page.retryTimer = setTimeout(() => connect(page.lastEventId), delay);
    }
  }

  function errorMessage(body) {
    const error = body && body.error;
    return error && typeof error.message === "string" ? error.message : "";
  }

  function onReading(event) {
    const reading = JSON.parse(event.data);
    page.received.push(reading.seq);
    page.shownAt.push(null);
    if (page.received.length > MAX_RECEIVED) {
      const dropped = page.received.length - MAX_RECEIVED / 2;
      page.received.splice(0, dropped);
      page.shownAt.splice(0, dropped);
      page.unshown = Math.max(0, page.unshown - dropped);
      page.receivedDropped += dropped;
    }
    page.lastEventId = event.lastEventId;
    page.headerDirty = true;
    take(reading);
    requestFrame();
  }

  function onReset(event) {
    const data = parseData(event.data);
    const reason = data.reason || "reset";
    if (reason === "snapshot_limit") {
      notice("reset", `Snapshot cut (${reason}): ${data.topics} topics match; the ${data.limit} updated last are shown.`, data);
      return;
    }
    const details = [];
    if (data.first_available_id !== undefined) details.push(`readings from event ${data.first_available_id} on`);
    if (data.requested_id !== undefined) details.push(`after ${data.requested_id} was asked for`);
    if (data.requested_time !== undefined) details.push(`since ${data.requested_time} was asked for`);
    const text = `History gap (${reason})${details.length ? `: ${details.join(", ")}` : ""}`;
    notice("reset", `${text}; earlier readings are not shown.`, data);
  }

  function onEnd(event, source) {
    const data = parseData(event.data);
    const reason = data.reason || "unknown";
    if (reason === "token_expired") {
      source.close(); // reconnecting with the expired cookie would only be refused
      page.source = null;
      notice("end", "The stream ended: the token expired.", data);
      askForToken("Your token expired: enter a new one to go on where the stream stopped.");
      return;
    }
    notice("end", `The stream ended (${reason}); reconnecting.`, data);
    setState("reconnecting"); // the service closes the stream now; the browser comes back after its retry delay
  }

  function parseData(text) {
    try {
      const data = JSON.parse(text);
      return data && typeof data === "object" ? data : {};
    } catch (err) {
      return {};
    }
  }

  // ---- tokens: handed to /v1/session once, kept by the browser as an HttpOnly cookie, never by the page

  function askForToken(reason) {
    closeSource();
    setState("signed out");
    view.tokenReason.textContent = reason;
    view.tokenError.textContent = "";
    view.tokenForm.hidden = false;
    view.token.focus();
  }

  async function submitToken(event) {
    event.preventDefault();
    const token = view.token.value.trim();
    view.token.value = "";
    if (!token) return;
    view.tokenError.textContent = "";
    let answer;
    try {
      answer = await fetch("/v1/session", {
        method: "POST",
        headers: { Authorization: `Bearer ${token}` },
        credentials: "same-origin",
      });
    } catch (err) {
      view.tokenError.textContent = "The stream service cannot be reached; try again.";
      return;
    }
    if (answer.status !== 204) {
      const message = errorMessage(await answer.json().catch(() => null));
      view.tokenError.textContent = `Not accepted (${answer.status}): ${message || "try another token"}`;
      view.token.focus();
      return;
    }
    view.tokenForm.hidden = true;
    view.forgetToken.hidden = false;
    connect(page.lastEventId);
  }

  async function forgetToken() {
    closeSource();
    await fetch("/v1/session", { method: "DELETE", credentials: "same-origin" }).catch(() => null);
    view.forgetToken.hidden = true;
    askForToken("Your token is forgotten.");
  }

  // ---- data: updated as readings arrive, drawn in the next frame

  function take(reading) {
    let topic = page.topics.get(reading.topic);
    if (!topic) {
      topic = {
        name: reading.topic,
        colour: colourOf(reading.topic),
        xs: [],
        ys: [],
        latest: null,
        unit: "",
        row: null,
        chart: null,
        card: null,
        plot: null,
        caption: null,
        visible: false,
        rowDirty: true,
        chartDirty: true,
        drawnAt: -Infinity,
      };
      page.topics.set(reading.topic, topic);
      page.fresh.push(topic);
    }
    const receivedMs = Date.parse(reading.received_at);
    topic.latest = reading; // the stream sends readings in order: the last one received is the latest
    topic.latestMs = receivedMs;
    if (reading.unit && reading.unit !== topic.unit) {
      topic.unit = reading.unit;
      topic.unitChanged = topic.chart !== null;
    }
    if (page.state === "live") page.clockOffsetMs = Math.max(page.clockOffsetMs, receivedMs - Date.now());
    addPoint(topic, receivedMs / 1000, reading.value);
    topic.rowDirty = true;
    topic.chartDirty = true;
  }

  function colourOf(name) {
    // The same topic keeps its colour across reloads and views.
    let hash = 0;
    for (let i = 0; i < name.length; i += 1) hash = (hash * 31 + name.charCodeAt(i)) >>> 0;
    return COLOURS[hash % COLOURS.length];
  }

  function addPoint(topic, x, y) {
    const { xs, ys } = topic;
    const last = xs.length - 1;
    const bucket = Math.floor((x * 1000) / BUCKET_MS);
    if (last >= 0 && Math.floor((xs[last] * 1000) / BUCKET_MS) === bucket && x >= xs[last]) {
      xs[last] = x; // the latest reading of its half second stands for it
      ys[last] = y;
    } else if (last < 0 || x >= xs[last]) {
      xs.push(x);
      ys.push(y);
    } else {
      let at = last; // stored out of order (several ingest replicas): keep the x values sorted
      while (at >= 0 && xs[at] > x) at -= 1;
      xs.splice(at + 1, 0, x);
      ys.splice(at + 1, 0, y);
    }
    const cutoff = x - WINDOW_MS / 1000; // charts off screen are not drawn, but keep no more than the window either
    while (xs.length > 1 && xs[0] < cutoff) {
      xs.shift();
      ys.shift();
    }
  }

  function serviceNowMs() {
    return Date.now() + page.clockOffsetMs;
  }

  function clearView() {
    visibility.disconnect();
    for (const topic of page.topics.values()) if (topic.chart) topic.chart.destroy();
    page.topics.clear();
    page.fresh = [];
    page.placed = [];
    page.charted = 0;
    view.tooMany.hidden = true;
    page.received = [];
    page.receivedDropped = 0;
    page.shownAt = [];
    page.unshown = 0;
    page.lastEventId = null;
    page.headerDirty = true;
    view.rows.replaceChildren();
    view.charts.replaceChildren();
    view.empty.hidden = false;
  }

  // ---- the page, one frame at a time

  function requestFrame() {
    if (!page.frameRequested) {
      page.frameRequested = true;
      requestAnimationFrame(frame);
    }
  }

  function frame(now) {
    page.frameRequested = false;
    if (page.headerDirty) {
      view.state.textContent = page.state;
      view.state.dataset.state = page.state.replaceAll(" ", "-");
      view.lastId.textContent = page.lastEventId === null ? "none" : page.lastEventId;
      page.headerDirty = false;
    }
    if (page.fresh.length) {
      page.fresh.sort((a, b) => (a.name < b.name ? -1 : 1)).forEach(place);
      page.fresh = [];
      view.empty.hidden = true;
    }
    const serviceNow = serviceNowMs();
    const due = [];
    let pending = false;
    for (const topic of page.topics.values()) {
      if (topic.rowDirty || page.agesDue) drawRow(topic, serviceNow);
      // Off screen (or beyond MAX_CHARTS): drawn when scrolled to. On screen: made, or redrawn when changed.
      if (!topic.visible || (topic.chart && !topic.chartDirty)) continue;
      if (now - topic.drawnAt >= CHART_REDRAW_MS) due.push(topic);
      else pending = true;
    }
    page.agesDue = false;
    // The charts waiting longest first, a few a frame: readings of many topics arrive together, their redraws
    // are spread over the next frames instead of all falling into one.
    due.sort((a, b) => a.drawnAt - b.drawnAt);
    const drawn = due.slice(0, CHARTS_PER_FRAME);
    for (const topic of drawn) {
      if (topic.chart) drawChart(topic, serviceNow);
      else topic.chart = makeChart(topic);
      topic.chartDirty = false;
      topic.drawnAt = now;
    }
    if (pending || due.length > CHARTS_PER_FRAME) requestFrame();
    stampFrame(drawn);
  }

  function stampFrame(drawn) {
    // For the test hook: this frame wrote every reading received before it to the table, and drew these charts.
    // The wall clock, so that a benchmark can compare it with its own (`now` is when the frame began, which may be
    // before a reading that this frame still shows arrived).
    const at = performance.timeOrigin + performance.now();
    for (let i = page.unshown; i < page.shownAt.length; i += 1) page.shownAt[i] = at;
    page.unshown = page.shownAt.length;
    for (const topic of drawn) page.chartDraws.push({ topic: topic.name, at });
    if (page.chartDraws.length > MAX_KEPT_DRAWS) page.chartDraws.splice(0, page.chartDraws.length - MAX_KEPT_DRAWS);
  }

  function place(topic) {
    // Rows and charts in topic order: a new topic goes before the first one after it.
    let low = 0;
    let high = page.placed.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (page.placed[middle].name < topic.name) low = middle + 1;
      else high = middle;
    }
    const next = page.placed[low];
    page.placed.splice(low, 0, topic);
    topic.row = makeRow(topic);
    view.rows.insertBefore(topic.row, next ? next.row : null);
    if (page.charted >= MAX_CHARTS) {
      view.tooMany.hidden = false;
      return; // in the table only
    }
    page.charted += 1;
    topic.card = makeCard(topic);
    const nextCard = page.placed.slice(low + 1).find((t) => t.card);
    view.charts.insertBefore(topic.card, nextCard ? nextCard.card : null);
    visibility.observe(topic.card); // its chart is made once it is on screen
  }

  function makeRow(topic) {
    const row = document.createElement("tr");
    row.dataset.topic = topic.name;
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = topic.name;
    row.append(name);
    for (const kind of ["value", "age", "seq"]) {
      const cell = document.createElement("td");
      cell.className = `num ${kind}`;
      row.append(cell);
    }
    return row;
  }

  function drawRow(topic, serviceNow) {
    const reading = topic.latest;
    const [, value, age, seq] = topic.row.children;
    if (topic.rowDirty) {
      value.textContent = formatValue(reading.value, reading.unit);
      seq.textContent = reading.seq;
      if (topic.caption) topic.caption.textContent = formatValue(reading.value, reading.unit);
      topic.rowDirty = false;
    }
    age.textContent = formatAge(serviceNow - topic.latestMs);
  }

  function formatValue(value, unit) {
    const text = Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(6)));
    return unit ? `${text} ${unit}` : text;
  }

  function formatAge(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d`;
  }

  function makeCard(topic) {
    const card = document.createElement("figure");
    card.className = "chart";
    card.dataset.topic = topic.name;
    const caption = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "topic";
    name.textContent = topic.name;
    topic.caption = document.createElement("span");
    topic.caption.className = "latest-value";
    caption.append(name, topic.caption);
    const plot = document.createElement("div");
    topic.plot = plot;
    plot.className = "plot";
    plot.setAttribute("role", "img");
    plot.setAttribute("aria-label", `${topic.name} over the last 10 minutes; its latest value is in the table`);
    card.append(caption, plot);
    return card;
  }

  function makeChart(topic) {
    const axis = { stroke: "#3d4650", grid: { stroke: "#e3e6ea", width: 1 }, ticks: { stroke: "#c9ced4", width: 1 } };
    const options = {
      width: chartWidth(topic),
      height: CHART_HEIGHT_PX,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        // The x axis is the window up to now, also when a topic has few points or none in it.
        x: { time: true, range: () => [(serviceNowMs() - WINDOW_MS) / 1000, serviceNowMs() / 1000] },
      },
      padding: [8, 28, 0, 0], // room for the last time label at the right edge
      // uPlot marks the points themselves only where they are sparse: a topic with a reading or two still shows.
      series: [{}, { label: topic.name, stroke: topic.colour, width: 1.5 }],
      axes: [{ ...axis, values: clockTimes }, { ...axis, label: topic.unit || "value", size: 56, labelSize: 18 }],
    };
    topic.unitChanged = false;
    return new uPlot(options, [topic.xs.slice(), topic.ys.slice()], topic.plot);
  }

  function clockTimes(chart, splits) {
    return splits.map((s) => new Date(s * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }));
  }

  function chartWidth(topic) {
    return Math.max(MIN_CHART_WIDTH_PX, topic.plot.clientWidth);
  }

  function drawChart(topic, serviceNow) {
    const cutoff = (serviceNow - WINDOW_MS) / 1000;
    let old = 0;
    while (old < topic.xs.length - 1 && topic.xs[old] < cutoff) old += 1; // the last point stays, for the table
    if (old) {
      topic.xs.splice(0, old);
      topic.ys.splice(0, old);
    }
    if (topic.unitChanged) {
      topic.chart.destroy();
      topic.chart = makeChart(topic);
    }
    // uPlot keeps the arrays it is given: hand it copies, so that readings arriving meanwhile change nothing drawn.
    topic.chart.setData([topic.xs.slice(), topic.ys.slice()]);
  }

  // Charts off screen are not drawn (50 charts at 10 readings/s each would be); they catch up when scrolled to.
  const visibility = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const topic = page.topics.get(entry.target.dataset.topic);
      if (topic) topic.visible = entry.isIntersecting;
    }
    requestFrame();
  });

  // One observer for every chart's width: the grid reflows at phone width and when the window is resized.
  const widths = new ResizeObserver(() => {
    const sized = [...page.topics.values()].filter((topic) => topic.chart);
    const sizes = sized.map(chartWidth); // every width read first: one layout, not one per chart
    sized.forEach((topic, i) => topic.chart.setSize({ width: sizes[i], height: CHART_HEIGHT_PX }));
  });

  // ---- state, notices

  function setState(state) {
    page.state = state;
    page.headerDirty = true;
    requestFrame();
  }

  function notice(kind, text, data) {
    // kind: "reset" and "error" interrupt (role=alert), "end" is announced politely (role=status).
    const item = { kind, text, data: data || {}, at: new Date().toISOString() };
    const role = kind === "end" ? "status" : "alert";
    page.notices.push(item);
    if (page.notices.length > MAX_KEPT_NOTICES) page.notices.shift();
    const element = document.createElement("div");
    element.className = `notice notice-${item.kind}`;
    element.setAttribute("role", role);
    const message = document.createElement("p");
    message.textContent = `${new Date().toLocaleTimeString()}: ${text}`;
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.textContent = "Dismiss";
    dismiss.setAttribute("aria-label", "Dismiss this notice");
    dismiss.addEventListener("click", () => element.remove());
    element.append(message, dismiss);
    view.notices.prepend(element);
    while (view.notices.children.length > MAX_NOTICES) view.notices.lastElementChild.remove();
  }

  // ---- a read-only hook for tests and debugging (the browser tests compare `received` with what ingest stored)

  window.telemetryPage = Object.freeze({
    get received() {
      return page.received.slice(); // the seqs of the readings received, in order (the latest MAX_RECEIVED)
    },
    get receivedCount() {
      return page.received.length + page.receivedDropped;
    },
    get receivedDropped() {
      return page.receivedDropped;
    },
    get shownAt() {
      // Beside `received`: when the animation frame that wrote each reading to the table ended, in ms since the
      // epoch (performance.timeOrigin + performance.now()); null until a frame has.
      return page.shownAt.slice();
    },
    get chartDraws() {
      // The latest MAX_KEPT_DRAWS charts drawn, {topic, at} on the same clock: a chart drawn shows every reading
      // of its topic received before it (the latest of each half second).
      return page.chartDraws.map((d) => ({ ...d }));
    },
    get state() {
      return page.state;
    },
    get lastEventId() {
      return page.lastEventId;
    },
    get notices() {
      return page.notices.map((n) => ({ ...n, data: { ...n.data } }));
    },
    get patterns() {
      return page.patterns.slice();
    },
    chart(name) {
      // What the chart of a topic shows: its x values (seconds) and values, and its axis unit.
      const topic = page.topics.get(name);
      if (!topic || !topic.chart) return null;
      return { xs: Array.from(topic.chart.data[0]), ys: Array.from(topic.chart.data[1]), unit: topic.unit };
    },
  });

  // ---- start

  view.topicForm.addEventListener("submit", follow);
  document.getElementById("add-pattern").addEventListener("click", () => addPatternInput("").focus());
  view.tokenForm.addEventListener("submit", submitToken);
  view.forgetToken.addEventListener("click", forgetToken);
  widths.observe(view.charts);
  setInterval(() => {
    // Once a second: the ages in the table, and the window of every chart slides.
    page.agesDue = true;
    for (const topic of page.topics.values()) topic.chartDirty = true;
    requestFrame();
  }, 1000);

  page.patterns = patternsFromUrl();
  showPatterns(page.patterns);
  connect(null, "connecting");
})();
