// keras-serve model explorer: plain JavaScript, no build step, no network but this server.
//
// Talks to the JSON API with fetch (relative URLs, so the page also works behind a path
// prefix) and shows the PNG grids the server renders as blob: URLs, because an <img src>
// could not send the X-API-Key header.
"use strict";

(() => {
  const KEY_STORAGE = "keras-serve.api-key";
  const MODEL_STORAGE = "keras-serve.model";
  const MNIST_SIZE = 28; // digits models take 28x28 grayscale, like MNIST
  const MNIST_BOX = 20; // MNIST digits are scaled to fit 20x20 inside the 28x28 field
  const PEN_WIDTH = 20; // on the 280x280 pad: about 2 pixels once scaled down, like MNIST strokes
  const HISTORY_LENGTH = 20;

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  const state = {
    models: [], // GET models
    details: new Map(), // "name@version" -> promise of GET models/{name}?version=
    current: null, // the prediction on show: {id, model, version, label, confidence, probabilities}
    layers: [],
    viewToken: 0, // bumped per prediction shown
    requests: { activation: 0, kernels: 0, gradcam: 0 }, // bumped per request in each view
    images: {}, // img id -> blob: URL on show
    history: [],
    modelsTimer: null,
  };

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }

    describe() {
      return this.status ? `${this.message} (HTTP ${this.status}, ${this.code})` : this.message;
    }
  }

  const describeError = (error) => (error instanceof ApiError ? error.describe() : String(error && error.message || error));

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE);
    } catch {
      return null;
    }
  }

  let keyPrompt = null; // one prompt answers every request that got a 401 meanwhile

  function askForKey(reason) {
    if (!keyPrompt) {
      keyPrompt = new Promise((resolve) => {
        const input = $("api-key");
        $("key-reason").textContent = reason;
        $("key-panel").hidden = false;
        input.value = "";
        input.focus();
        $("key-form").onsubmit = (event) => {
          event.preventDefault();
          const key = input.value.trim();
          if (!key) return;
          sessionStorage.setItem(KEY_STORAGE, key);
          $("key-panel").hidden = true;
          keyPrompt = null;
          updateForgetButton();
          resolve();
        };
      });
    }
    return keyPrompt;
  }

  async function readError(response) {
    let code = `http_${response.status}`;
    let message = response.statusText || "request failed";
    try {
      const text = await response.text();
      try {
        const body = JSON.parse(text);
        if (body && body.error) {
          code = body.error.code || code;
          message = body.error.message || message;
        }
      } catch {
        if (text) message = text.slice(0, 300);
      }
    } catch {
      // keep the status line
    }
    return new ApiError(response.status, code, message);
  }

  // fetch with the API key; on 401 ask for a key and try again
  async function api(path, init = {}) {
    for (;;) {
      const headers = new Headers(init.headers || {});
      const key = storedKey();
      if (key) headers.set("X-API-Key", key);
      let response;
      try {
        response = await fetch(path, { ...init, headers });
      } catch (error) {
        throw new ApiError(0, "network_error", `Could not reach the server (${error.message}).`);
      }
      if (response.status === 401) {
        const error = await readError(response);
        setStatus("Waiting for the API key…");
        await askForKey(
          key ? `The server refused this key (${error.message}). Enter it again.` : `This server needs an API key (${error.message}).`,
        );
        setStatus("");
        continue;
      }
      if (!response.ok) throw await readError(response);
      return response;
    }
  }

  const getJson = async (path) => (await api(path)).json();

  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
    }
    const text = search.toString();
    return text ? `?${text}` : "";
  }

  function modelDetail(name, version) {
    const key = `${name}@${version ?? ""}`;
    if (!state.details.has(key)) {
      const promise = getJson(`models/${enc(name)}${query({ version })}`);
      promise.catch(() => state.details.delete(key)); // retry next time
      state.details.set(key, promise);
    }
    return state.details.get(key);
  }

  // ------------------------------------------------------------ messages

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showError(error) {
    const box = $("error");
    box.textContent = `Error: ${describeError(error)}`;
    box.hidden = false;
    setStatus("");
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function sectionError(name, error) {
    const box = $(`${name}-error`);
    if (error) {
      box.textContent = `Could not load: ${describeError(error)}`;
      box.hidden = false;
    } else {
      box.hidden = true;
      box.textContent = "";
    }
  }

  function updateForgetButton() {
    $("forget-key").hidden = !storedKey();
  }

  const percent = (p) => (p > 0 && p < 0.0005 ? "<0.1%" : `${(100 * p).toFixed(1)}%`);

  function element(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "className") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  // --------------------------------------------------------------- models

  const selectedModel = () => state.models.find((m) => m.name === $("model").value && m.default_version != null);

  const isDigitsModel = (model) =>
    model && model.input && model.input.height === MNIST_SIZE && model.input.width === MNIST_SIZE && model.input.color_mode === "grayscale";

  async function loadModels() {
    clearTimeout(state.modelsTimer);
    const select = $("model");
    setStatus("Loading models…");
    let body;
    try {
      body = await getJson("models");
    } catch (error) {
      showError(error);
      select.replaceChildren(element("option", { value: "", text: "No models" }));
      return;
    }
    state.models = body.models;
    const wanted = select.value || sessionStorage.getItem(MODEL_STORAGE);
    select.replaceChildren();
    for (const model of state.models) {
      const ready = model.default_version != null;
      const label = ready ? `${model.name} (v${model.default_version})` : `${model.name} (${model.state})`;
      const option = element("option", { value: model.name, text: label });
      option.disabled = !ready;
      select.append(option);
    }
    const ready = state.models.filter((m) => m.default_version != null);
    if (!state.models.length) select.append(element("option", { value: "", text: "No models in the store" }));
    select.value = (ready.find((m) => m.name === wanted) || ready[0] || { name: "" }).name;
    select.disabled = !ready.length;
    setStatus(ready.length ? "" : "No model is ready yet.");
    if (state.models.some((m) => m.state === "loading")) state.modelsTimer = setTimeout(loadModels, 2000);
    onModelChange();
  }

  function onModelChange() {
    const model = selectedModel();
    const info = $("model-info");
    if (!model) {
      info.textContent = "";
      $("draw-panel").hidden = true;
      return;
    }
    sessionStorage.setItem(MODEL_STORAGE, model.name);
    const spec = model.input;
    const classes = model.class_names;
    const shown = classes.slice(0, 10).join(", ") + (classes.length > 10 ? `, … (${classes.length - 10} more)` : "");
    info.textContent = `${spec.width}×${spec.height} ${spec.color_mode}; ${classes.length} classes: ${shown}.`;
    $("draw-panel").hidden = !isDigitsModel(model);
  }

  // ----------------------------------------------------------- prediction

  function setBusy(busy) {
    for (const id of ["upload-predict", "draw-predict"]) $(id).disabled = busy;
    $("results").setAttribute("aria-busy", String(busy));
  }

  async function predict(init, thumb) {
    const model = selectedModel();
    if (!model) {
      showError(new ApiError(0, "no_model", "Pick a ready model first."));
      return;
    }
    clearError();
    setBusy(true);
    setStatus(`Predicting with ${model.name}…`);
    try {
      const response = await api(`models/${enc(model.name)}/predict`, { method: "POST", ...init });
      const result = await response.json();
      const p = result.predictions[0];
      const prediction = {
        id: p.id,
        model: result.model,
        version: result.version,
        label: p.label,
        confidence: p.confidence,
        probabilities: p.probabilities,
      };
      history.pushState(null, "", permalink(prediction));
      addHistory(prediction, thumb);
      await showPrediction(prediction, thumb, { reveal: true });
      setStatus(`Predicted ${prediction.label} (${percent(prediction.confidence)}) with ${prediction.model} v${prediction.version}.`);
    } catch (error) {
      showError(error);
    } finally {
      setBusy(false);
    }
  }

  const permalink = (p) => `#${new URLSearchParams({ id: p.id, model: p.model, version: String(p.version) })}`;

  async function showPrediction(prediction, thumb, { reveal = false } = {}) {
    state.current = prediction;
    const detail = await modelDetail(prediction.model, prediction.version);
    if (state.current !== prediction) return;
    const classNames = detail.card.class_names;

    $("results-empty").hidden = true;
    $("results-body").hidden = false;
    $("top-label").textContent = prediction.label;
    $("top-confidence").textContent = percent(prediction.confidence);
    $("result-meta").textContent = `${prediction.model} v${prediction.version}, prediction ${prediction.id}`;
    const link = $("permalink");
    link.href = permalink(prediction);
    link.textContent = prediction.id;
    const image = $("input-thumb");
    image.hidden = !thumb;
    if (thumb) {
      image.src = thumb;
      image.alt = "The input image";
    }
    renderBars(classNames, prediction.probabilities, prediction.label);
    renderGradcamClasses(classNames, prediction.label);
    // on a phone the answer is below the input: bring it into view (a no-op when it is visible)
    if (reveal) $("results").scrollIntoView({ block: "nearest" });
    await showViews(prediction, detail);
  }

  function renderBars(classNames, probabilities, top) {
    const list = $("bars");
    list.replaceChildren();
    for (const name of classNames) {
      const p = probabilities[name] ?? 0;
      const fill = element("span", { className: "bar-fill" });
      fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
      list.append(
        element(
          "li",
          { className: name === top ? "bar is-top" : "bar", "data-label": name },
          element("span", { className: "bar-label", text: name }),
          element("span", { className: "bar-track", "aria-hidden": "true" }, fill),
          element("span", { className: "bar-value", text: percent(p) }),
        ),
      );
    }
  }

  // -------------------------------------------------------------- history

  function addHistory(prediction, thumb) {
    state.history.unshift({ ...prediction, thumb });
    for (const dropped of state.history.splice(HISTORY_LENGTH)) {
      if (dropped.thumb && dropped.thumb.startsWith("blob:")) URL.revokeObjectURL(dropped.thumb);
    }
    const list = $("history");
    list.replaceChildren();
    for (const item of state.history) {
      const thumbImage = element("img", { className: "thumb small", alt: "" });
      if (item.thumb) thumbImage.src = item.thumb;
      list.append(
        element(
          "li",
          {},
          thumbImage,
          element(
            "span",
            {},
            element("a", { href: permalink(item), text: `${item.label} (${percent(item.confidence)})` }),
            element("span", { className: "hint", text: `${item.model} v${item.version}, ${item.id}` }),
          ),
        ),
      );
    }
    $("history-panel").hidden = false;
  }

  // ------------------------------------------------------- inside the net

  const dims = (shape) => shape.slice(1).join("×");
  const isSpatial = (layer) => layer.output_shape.length === 4;
  // the kernels and Grad-CAM routes work on Conv2D layers
  const firstConv = (layers) => layers.find((l) => l.type === "Conv2D");

  function setImage(id, url, alt) {
    const image = $(id);
    if (state.images[id]) URL.revokeObjectURL(state.images[id]);
    state.images[id] = url;
    if (url) {
      image.src = url;
      image.alt = alt;
      image.hidden = false;
    } else {
      image.removeAttribute("src");
      image.hidden = true;
    }
  }

  // a check that this request is still the latest for its view and prediction: stale answers are dropped
  function ticket(section) {
    const number = ++state.requests[section];
    const view = state.viewToken;
    return () => number === state.requests[section] && view === state.viewToken;
  }

  async function fetchImage(path) {
    const blob = await (await api(path)).blob();
    return URL.createObjectURL(blob);
  }

  async function showViews(prediction, detail) {
    state.viewToken++;
    $("views").hidden = false;
    state.layers = detail.layers.filter((l) => l.type !== "InputLayer" && l.output_shape.length >= 2);
    const buttons = $("layer-buttons");
    buttons.replaceChildren();
    for (const layer of state.layers) {
      const button = element(
        "button",
        { type: "button", className: "layer-button", "aria-pressed": "false", "data-layer": layer.name },
        element("span", { className: "layer-name", text: layer.name }),
        element("span", { className: "layer-type", text: `${layer.type} ${dims(layer.output_shape)}` }),
      );
      button.addEventListener("click", () => showLayer(layer));
      buttons.append(button);
    }
    const conv = firstConv(state.layers);
    const first = conv || state.layers.find(isSpatial) || state.layers[state.layers.length - 1];
    await Promise.all([first ? showLayer(first) : null, showKernels(prediction, conv), showGradcam()]);
  }

  async function showLayer(layer) {
    const prediction = state.current;
    const latest = ticket("activation");
    for (const button of $("layer-buttons").children) {
      button.setAttribute("aria-pressed", String(button.dataset.layer === layer.name));
    }
    const caption = $("activation-caption");
    caption.textContent = `Loading ${layer.name}…`;
    sectionError("activation", null);
    try {
      let url;
      if (isSpatial(layer)) {
        const [, h, w, c] = layer.output_shape;
        url = await fetchImage(`activations/${enc(prediction.id)}${query({ format: "png", layer: layer.name })}`);
        if (!latest()) return URL.revokeObjectURL(url);
        caption.textContent = `${layer.name} (${layer.type}): ${c} feature map${c === 1 ? "" : "s"} of ${h}×${w}, each scaled to its own range.`;
      } else {
        const body = await getJson(`activations/${enc(prediction.id)}${query({ format: "json", layers: layer.name })}`);
        if (!latest()) return;
        const values = decodeLayer(body.layers[0]);
        url = await valuesImage(values);
        caption.textContent = `${layer.name} (${layer.type}): ${values.length} values, not spatial; one square each, brighter is larger.`;
      }
      const image = $("activation-img");
      image.dataset.layer = layer.name;
      setImage("activation-img", url, `Activations of layer ${layer.name}`);
    } catch (error) {
      if (!latest()) return;
      caption.textContent = "";
      setImage("activation-img", null);
      sectionError("activation", error);
    }
  }

  async function showKernels(prediction, conv) {
    const latest = ticket("kernels");
    const caption = $("kernels-caption");
    sectionError("kernels", null);
    if (!conv) {
      setImage("kernels-img", null);
      caption.textContent = "This model has no convolution layer.";
      return;
    }
    caption.textContent = `Loading ${conv.name}…`;
    try {
      const url = await fetchImage(
        `models/${enc(prediction.model)}/layers/${enc(conv.name)}/kernels${query({ format: "png", version: prediction.version })}`,
      );
      if (!latest()) return URL.revokeObjectURL(url);
      const filters = conv.output_shape[conv.output_shape.length - 1];
      caption.textContent = `${conv.name}: the ${filters} learned kernel${filters === 1 ? "" : "s"} of the first convolution layer.`;
      setImage("kernels-img", url, `Learned kernels of layer ${conv.name}`);
    } catch (error) {
      if (!latest()) return;
      caption.textContent = "";
      setImage("kernels-img", null);
      sectionError("kernels", error);
    }
  }

  function renderGradcamClasses(classNames, predicted) {
    const select = $("gradcam-class");
    select.replaceChildren(element("option", { value: "", text: `the predicted class (${predicted})` }));
    for (const name of classNames) select.append(element("option", { value: name, text: name }));
  }

  async function showGradcam() {
    const prediction = state.current;
    const latest = ticket("gradcam");
    const caption = $("gradcam-caption");
    sectionError("gradcam", null);
    if (!firstConv(state.layers)) {
      setImage("gradcam-img", null);
      caption.textContent = "Grad-CAM needs a convolution layer; this model has none.";
      return;
    }
    const label = $("gradcam-class").value;
    caption.textContent = "Loading Grad-CAM…";
    try {
      const url = await fetchImage(`activations/${enc(prediction.id)}/gradcam${query({ format: "png", class: label })}`);
      if (!latest()) return URL.revokeObjectURL(url);
      const shown = label || prediction.label;
      caption.textContent = `Where the last convolution layer finds evidence for “${shown}”, over the input.`;
      setImage("gradcam-img", url, `Grad-CAM heatmap for class ${shown} over the input`);
    } catch (error) {
      if (!latest()) return;
      caption.textContent = "";
      setImage("gradcam-img", null);
      sectionError("gradcam", error);
    }
  }

  // one layer of GET activations/{id}?format=json: base64 little-endian float32, or nested lists
  function decodeLayer(layer) {
    if (layer.encoding === "list") return Float32Array.from(layer.data.flat(Infinity));
    const bytes = Uint8Array.from(atob(layer.data), (c) => c.charCodeAt(0));
    const view = new DataView(bytes.buffer);
    const values = new Float32Array(bytes.length / 4);
    for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(4 * i, true);
    return values;
  }

  // a vector as a grid of grey squares (dense layers have no spatial grid for the server to draw)
  function valuesImage(values) {
    const columns = Math.max(1, Math.ceil(Math.sqrt(values.length)));
    const rows = Math.max(1, Math.ceil(values.length / columns));
    const canvas = element("canvas");
    canvas.width = columns;
    canvas.height = rows;
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(columns, rows);
    let low = Infinity;
    let high = -Infinity;
    for (const v of values) {
      low = Math.min(low, v);
      high = Math.max(high, v);
    }
    const range = high > low ? high - low : 1;
    values.forEach((v, i) => {
      const grey = Math.round((255 * (v - low)) / range);
      pixels.data.set([grey, grey, grey, 255], 4 * i);
    });
    context.putImageData(pixels, 0, 0);
    return new Promise((resolve) => canvas.toBlob((blob) => resolve(URL.createObjectURL(blob)), "image/png"));
  }

  // ------------------------------------------------------------ permalinks

  async function loadFromHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const id = params.get("id");
    const model = params.get("model");
    const version = params.get("version") || undefined;
    if (!id || (state.current && state.current.id === id)) return;
    clearError();
    if (!model) {
      showError(new ApiError(0, "bad_link", "This link has no model name: expected #id=…&model=…"));
      return;
    }
    setStatus(`Fetching prediction ${id}…`);
    try {
      if (state.models.some((m) => m.name === model && m.default_version != null)) {
        $("model").value = model;
        onModelChange();
      }
      const detail = await modelDetail(model, version);
      const last = detail.layers[detail.layers.length - 1];
      // the last layer's activations are the probabilities /predict returned for this id
      const body = await getJson(`activations/${enc(id)}${query({ format: "json", layers: last.name })}`);
      const values = decodeLayer(body.layers[0]);
      const classNames = detail.card.class_names;
      const probabilities = Object.fromEntries(classNames.map((name, i) => [name, values[i]]));
      let best = 0;
      values.forEach((v, i) => {
        if (v > values[best]) best = i;
      });
      await showPrediction({
        id,
        model: body.model || model,
        version: body.version || detail.version,
        label: classNames[best],
        confidence: values[best],
        probabilities,
      });
      setStatus(`Showing prediction ${id}: ${classNames[best]} (${percent(values[best])}).`);
    } catch (error) {
      showError(error);
    }
  }

  // ------------------------------------------------------------ drawing pad

  // The pad holds white strokes on black, like MNIST. `mnistDigit` turns it into what an MNIST
  // model expects: cropped to the ink, scaled to fit 20x20 keeping its aspect ratio, placed in
  // 28x28 with its centre of mass at the centre. Returns 28*28 values in 0..255, or null if blank.
  function mnistDigit(canvas) {
    const { width, height } = canvas;
    const rgba = canvas.getContext("2d").getImageData(0, 0, width, height).data;
    let minX = width;
    let minY = height;
    let maxX = -1;
    let maxY = -1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (rgba[4 * (y * width + x)] > 0) {
          minX = Math.min(minX, x);
          maxX = Math.max(maxX, x);
          minY = Math.min(minY, y);
          maxY = Math.max(maxY, y);
        }
      }
    }
    if (maxX < 0) return null;
    const cropWidth = maxX - minX + 1;
    const cropHeight = maxY - minY + 1;
    const crop = new Float32Array(cropWidth * cropHeight);
    for (let y = 0; y < cropHeight; y++) {
      for (let x = 0; x < cropWidth; x++) crop[y * cropWidth + x] = rgba[4 * ((y + minY) * width + x + minX)];
    }
    const scale = MNIST_BOX / Math.max(cropWidth, cropHeight);
    const boxWidth = Math.max(1, Math.round(cropWidth * scale));
    const boxHeight = Math.max(1, Math.round(cropHeight * scale));
    const box = resizeArea(crop, cropWidth, cropHeight, boxWidth, boxHeight);

    let mass = 0;
    let sumX = 0;
    let sumY = 0;
    for (let y = 0; y < boxHeight; y++) {
      for (let x = 0; x < boxWidth; x++) {
        const v = box[y * boxWidth + x];
        mass += v;
        sumX += v * (x + 0.5); // pixel centres
        sumY += v * (y + 0.5);
      }
    }
    const shiftX = Math.round(MNIST_SIZE / 2 - sumX / mass);
    const shiftY = Math.round(MNIST_SIZE / 2 - sumY / mass);
    const out = new Float32Array(MNIST_SIZE * MNIST_SIZE);
    for (let y = 0; y < boxHeight; y++) {
      for (let x = 0; x < boxWidth; x++) {
        const tx = x + shiftX;
        const ty = y + shiftY;
        if (tx >= 0 && tx < MNIST_SIZE && ty >= 0 && ty < MNIST_SIZE) {
          out[ty * MNIST_SIZE + tx] = Math.min(255, Math.max(0, box[y * boxWidth + x]));
        }
      }
    }
    return out;
  }

  // area-average resize (exact box filter, anti-aliased like MNIST's), rows then columns
  function resizeArea(source, width, height, newWidth, newHeight) {
    const rows = new Float32Array(newWidth * height);
    for (let y = 0; y < height; y++) {
      resizeLine(source, y * width, 1, width, rows, y * newWidth, 1, newWidth);
    }
    const out = new Float32Array(newWidth * newHeight);
    for (let x = 0; x < newWidth; x++) resizeLine(rows, x, newWidth, height, out, x, newWidth, newHeight);
    return out;
  }

  function resizeLine(source, start, step, length, target, targetStart, targetStep, newLength) {
    const ratio = length / newLength;
    for (let j = 0; j < newLength; j++) {
      const from = j * ratio;
      const to = from + ratio;
      let sum = 0;
      for (let i = Math.floor(from); i < Math.min(length, Math.ceil(to)); i++) {
        sum += (Math.min(to, i + 1) - Math.max(from, i)) * source[start + i * step];
      }
      target[targetStart + j * targetStep] = sum / ratio;
    }
  }

  function drawSeen(values) {
    const canvas = $("seen");
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(MNIST_SIZE, MNIST_SIZE);
    values.forEach((v, i) => pixels.data.set([v, v, v, 255], 4 * i));
    context.putImageData(pixels, 0, 0);
  }

  function setupPad() {
    const pad = $("pad");
    const context = pad.getContext("2d", { willReadFrequently: true });
    const cursor = $("pen-cursor");
    const pen = { x: pad.width / 2, y: pad.height / 2, down: false };
    let last = null;

    const clear = () => {
      context.fillStyle = "#000";
      context.fillRect(0, 0, pad.width, pad.height);
      drawSeen(new Float32Array(MNIST_SIZE * MNIST_SIZE));
    };
    const dot = ([x, y]) => {
      context.fillStyle = "#fff";
      context.beginPath();
      context.arc(x, y, PEN_WIDTH / 2, 0, 2 * Math.PI);
      context.fill();
    };
    const line = (from, to) => {
      context.strokeStyle = "#fff";
      context.lineWidth = PEN_WIDTH;
      context.lineCap = "round";
      context.lineJoin = "round";
      context.beginPath();
      context.moveTo(...from);
      context.lineTo(...to);
      context.stroke();
    };
    const point = (event) => {
      const r = pad.getBoundingClientRect();
      return [((event.clientX - r.left) * pad.width) / r.width, ((event.clientY - r.top) * pad.height) / r.height];
    };
    const updateSeen = () => {
      const values = mnistDigit(pad);
      if (values) drawSeen(values);
    };
    const showCursor = () => {
      cursor.style.left = `${(100 * pen.x) / pad.width}%`;
      cursor.style.top = `${(100 * pen.y) / pad.height}%`;
      cursor.classList.toggle("down", pen.down);
    };

    pad.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      pad.setPointerCapture(event.pointerId);
      last = point(event);
      dot(last);
    });
    pad.addEventListener("pointermove", (event) => {
      if (!last) return;
      const next = point(event);
      line(last, next);
      last = next;
    });
    for (const type of ["pointerup", "pointercancel"]) {
      pad.addEventListener(type, () => {
        if (!last) return;
        last = null;
        updateSeen();
      });
    }

    pad.addEventListener("focus", () => {
      cursor.hidden = false;
      showCursor();
    });
    pad.addEventListener("blur", () => {
      cursor.hidden = true;
    });
    pad.addEventListener("keydown", (event) => {
      const step = event.shiftKey ? 4 : 14;
      const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
      if (event.key in moves) {
        const [dx, dy] = moves[event.key];
        const from = [pen.x, pen.y];
        pen.x = Math.min(pad.width, Math.max(0, pen.x + dx));
        pen.y = Math.min(pad.height, Math.max(0, pen.y + dy));
        if (pen.down) {
          line(from, [pen.x, pen.y]);
          updateSeen();
        }
      } else if (event.key === " ") {
        pen.down = !pen.down;
        if (pen.down) {
          dot([pen.x, pen.y]);
          updateSeen();
        }
        $("pen-state").textContent = pen.down ? "Pen down: arrows draw." : "Pen up: arrows move without drawing.";
      } else if (event.key === "Enter") {
        predictDrawing();
      } else if (event.key === "Delete" || event.key === "Backspace") {
        clear();
      } else {
        return;
      }
      event.preventDefault();
      showCursor();
    });

    $("draw-clear").addEventListener("click", clear);
    $("draw-predict").addEventListener("click", predictDrawing);
    clear();
  }

  function predictDrawing() {
    const values = mnistDigit($("pad"));
    if (!values) {
      showError(new ApiError(0, "empty_drawing", "The drawing pad is empty: draw a digit first."));
      return;
    }
    drawSeen(values);
    // one instance in the model's input shape, 28 x 28 x 1, raw values in 0..255
    const rows = [];
    for (let y = 0; y < MNIST_SIZE; y++) {
      const row = [];
      for (let x = 0; x < MNIST_SIZE; x++) row.push([Math.round(values[y * MNIST_SIZE + x])]);
      rows.push(row);
    }
    predict(
      { headers: { "Content-Type": "application/json" }, body: JSON.stringify({ instances: [rows] }) },
      $("seen").toDataURL("image/png"),
    );
  }

  // ------------------------------------------------------------------ start

  function start() {
    $("model").addEventListener("change", onModelChange);
    $("reload-models").addEventListener("click", loadModels);
    $("upload-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const file = $("file").files[0];
      if (!file) {
        showError(new ApiError(0, "no_file", "Choose an image file first."));
        $("file").focus();
        return;
      }
      const form = new FormData();
      form.append("file", file, file.name || "image");
      predict({ body: form }, URL.createObjectURL(file));
    });
    $("file").addEventListener("change", () => {
      if ($("file").files.length) $("upload-form").requestSubmit();
    });
    $("gradcam-class").addEventListener("change", () => showGradcam());
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      updateForgetButton();
      setStatus("API key forgotten; the page will ask again when the server needs it.");
    });
    window.addEventListener("hashchange", loadFromHash);
    setupPad();
    updateForgetButton();
    loadModels().then(loadFromHash);
  }

  start();
})();
