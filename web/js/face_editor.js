// Edit Expression and Pose draws the face it will make, live, while the sliders move; Apply Emotion
// draws the emotion of its last run, live with Text Emotion's intensity. The pack's route
// (nodes/face_preview.py) sends the 3DMM once; posing and shading happen here in WebGL.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import {
  composeShape, describeEmotion, editorState, emotionAmounts, parseFacePreview, projectionMatrix, projectPoints,
  rotateVertices, rotationMatrix, stateKey, vertexNormals,
} from "./face_preview_math.js";

const LOAD_3DMM_NODE = "TalkingFaceLoad3DMM";
const TEXT_EMOTION_NODE = "TalkingFaceTextEmotion";
const DEMO_MODEL_CHOICE = "demo face (built-in)";
const PREVIEW_SIZE = 256;
const LANDMARK_PROPERTY = "talkingface_show_landmarks";

const faces = new Map(); // route query -> Promise of the parsed face

function loadFace(query) {
  if (!faces.has(query)) {
    const request = api
      .fetchApi(`/talkingface/face_preview?${query}`, { cache: "no-store" })
      .then(async (response) => {
        if (!response.ok) {
          const detail = await response.json().catch(() => ({}));
          throw new Error(detail.error ?? `face preview: HTTP ${response.status}`);
        }
        return parseFacePreview(await response.arrayBuffer());
      });
    request.catch(() => faces.delete(query)); // a file added later is found on the next try
    faces.set(query, request);
  }
  return faces.get(query);
}

const widgetValue = (node, name) => node?.widgets?.find((w) => w.name === name)?.value;

// The node of the given class wired into the named input, if any.
function inputNode(node, input, comfyClass) {
  const slot = node.findInputSlot?.(input) ?? -1;
  const source = slot >= 0 ? node.getInputNode?.(slot) : null;
  return source?.comfyClass === comfyClass || source?.type === comfyClass ? source : null;
}

// The Load 3DMM choice wired into face_model; the demo face when it comes from elsewhere.
function connectedModelName(node) {
  const choice = widgetValue(inputNode(node, "face_model", LOAD_3DMM_NODE), "model_name");
  return choice ? { name: choice, linked: true } : { name: DEMO_MODEL_CHOICE, linked: false };
}

// What each node previews: the route query it needs and the face it asks for.
const PREVIEWS = {
  TalkingFaceEditExpressionAndPose: {
    query: (model) => `model=${encodeURIComponent(model)}`,
    state(node, face) {
      const { angles, amounts } = editorState(node.widgets, face.header.sliders);
      return { angles, amounts, offsets: face.sliderOffsets, caption: "" };
    },
  },
  TalkingFaceApplyEmotion: {
    query: (model, node) =>
      `model=${encodeURIComponent(model)}&directions=${encodeURIComponent(widgetValue(node, "directions") ?? "")}`,
    state(node, face) {
      const shown = node.talkingfaceEmotion;
      if (!shown) return { message: "run the graph once: the emotion comes from Text Emotion's CLIP" };
      // Intensity only scales the weights, so Text Emotion's slider previews live; a new prompt needs a run.
      const live = Number(widgetValue(inputNode(node, "emotion", TEXT_EMOTION_NODE), "intensity"));
      const intensity = Number.isFinite(live) ? live : shown.intensity;
      const { emotions } = face.header;
      return {
        angles: [0, 0, 0],
        amounts: emotionAmounts(emotions, shown.weights, intensity),
        offsets: face.emotionOffsets,
        caption: ` ${describeEmotion(emotions, shown.weights)} × ${intensity.toFixed(2)}`,
      };
    },
  },
};

const VERTEX_SHADER = `#version 300 es
in vec3 position;
in vec3 normal;
in vec3 colour;
uniform mat4 projection;
out vec3 vNormal;
out vec3 vColour;
void main() {
  vNormal = normal;
  vColour = colour;
  gl_Position = projection * vec4(position, 1.0);
}`;

// A soft key light from the upper front plus ambient, close to the renderer's default SH light.
const FRAGMENT_SHADER = `#version 300 es
precision mediump float;
in vec3 vNormal;
in vec3 vColour;
out vec4 fragColour;
void main() {
  vec3 n = normalize(vNormal);
  float light = 0.45 + 0.6 * max(dot(n, normalize(vec3(0.25, 0.35, 1.0))), 0.0);
  fragColour = vec4(min(vColour * light, vec3(1.0)), 1.0);
}`;

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
  return shader;
}

class FacePreview {
  constructor(node, spec) {
    this.node = node;
    this.spec = spec;
    this.face = null;
    this.query = null;
    this.drawnKey = null;
    this.element = document.createElement("div");
    this.element.className = "talkingface-face-preview";
    Object.assign(this.element.style, { display: "flex", flexDirection: "column", alignItems: "center", gap: "2px" });
    const stage = document.createElement("div");
    Object.assign(stage.style, { position: "relative", width: `${PREVIEW_SIZE}px`, height: `${PREVIEW_SIZE}px` });
    this.canvas = document.createElement("canvas");
    this.overlay = document.createElement("canvas");
    for (const canvas of [this.canvas, this.overlay]) {
      canvas.width = canvas.height = PREVIEW_SIZE;
      Object.assign(canvas.style, { position: "absolute", left: "0", top: "0", width: "100%", height: "100%" });
    }
    this.canvas.dataset.talkingfacePreview = "face";
    this.overlay.style.pointerEvents = "none";
    stage.append(this.canvas, this.overlay);
    const controls = document.createElement("label");
    Object.assign(controls.style, { fontSize: "11px", display: "flex", gap: "4px", alignItems: "center" });
    this.landmarkToggle = document.createElement("input");
    this.landmarkToggle.type = "checkbox";
    this.landmarkToggle.checked = Boolean(node.properties?.[LANDMARK_PROPERTY]);
    this.landmarkToggle.addEventListener("change", () => {
      node.properties = { ...(node.properties ?? {}), [LANDMARK_PROPERTY]: this.landmarkToggle.checked };
      this.update();
    });
    this.caption = document.createElement("span");
    controls.append(this.landmarkToggle, document.createTextNode("landmarks"), this.caption);
    this.element.append(stage, controls);
    this.gl = this.canvas.getContext("webgl2", { preserveDrawingBuffer: true, antialias: true });
    if (this.gl) this.setUpGL();
    else this.showMessage("WebGL2 is off in this browser: no live preview");
  }

  setUpGL() {
    const gl = this.gl;
    const program = gl.createProgram();
    gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX_SHADER));
    gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT_SHADER));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
    this.program = program;
    this.buffers = {};
    for (const name of ["position", "normal", "colour"]) {
      this.buffers[name] = gl.createBuffer();
      const location = gl.getAttribLocation(program, name);
      gl.bindBuffer(gl.ARRAY_BUFFER, this.buffers[name]);
      gl.enableVertexAttribArray(location);
      gl.vertexAttribPointer(location, 3, gl.FLOAT, false, 0, 0);
    }
    this.indexBuffer = gl.createBuffer();
    this.projectionLocation = gl.getUniformLocation(program, "projection");
    gl.enable(gl.DEPTH_TEST);
  }

  showMessage(text) {
    if (this.gl) {
      this.gl.clearColor(0.08, 0.08, 0.09, 1);
      this.gl.clear(this.gl.COLOR_BUFFER_BIT | this.gl.DEPTH_BUFFER_BIT);
    }
    const context = this.overlay.getContext("2d");
    context.clearRect(0, 0, PREVIEW_SIZE, PREVIEW_SIZE);
    context.fillStyle = "#ccc";
    context.font = "12px sans-serif";
    context.fillText(text, 8, PREVIEW_SIZE / 2, PREVIEW_SIZE - 16);
  }

  setFace(face) {
    this.face = face;
    this.shape = new Float32Array(face.meanShape.length);
    this.posed = new Float32Array(face.meanShape.length);
    this.normals = new Float32Array(face.meanShape.length);
    const gl = this.gl;
    if (!gl) return;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.buffers.colour);
    gl.bufferData(gl.ARRAY_BUFFER, face.albedo, gl.STATIC_DRAW);
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.indexBuffer);
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, face.triangles, gl.STATIC_DRAW);
  }

  // Redraws when the model, a slider or the landmark toggle changed; cheap to call every frame.
  update() {
    const { name, linked } = connectedModelName(this.node);
    const query = this.spec.query(name, this.node);
    if (query !== this.query) {
      this.query = query;
      this.face = null;
      this.drawnKey = null;
      this.modelNote = linked ? "" : " (demo face until Load 3DMM is connected)";
      loadFace(query).then(
        (face) => {
          if (this.query !== query) return;
          this.setFace(face);
          this.update();
        },
        (error) => {
          if (this.query === query) this.showMessage(error.message);
        },
      );
      return;
    }
    if (!this.face || !this.gl) return;
    const state = this.spec.state(this.node, this.face);
    const landmarks = this.landmarkToggle.checked;
    const key = state.message ?? stateKey(query, state, landmarks);
    if (key === this.drawnKey) return;
    this.drawnKey = key;
    this.caption.textContent = (state.caption ?? "") + this.modelNote;
    if (state.message) this.showMessage(state.message);
    else this.draw(state, landmarks);
  }

  draw(state, landmarks) {
    const { face, gl } = this;
    composeShape(face.meanShape, state.offsets, state.amounts, this.shape);
    rotateVertices(this.shape, rotationMatrix(...state.angles), this.posed);
    vertexNormals(this.posed, face.triangles, this.normals);
    gl.viewport(0, 0, PREVIEW_SIZE, PREVIEW_SIZE);
    gl.clearColor(0.08, 0.08, 0.09, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.useProgram(this.program);
    gl.uniformMatrix4fv(this.projectionLocation, false, projectionMatrix(face.header.camera));
    gl.bindBuffer(gl.ARRAY_BUFFER, this.buffers.position);
    gl.bufferData(gl.ARRAY_BUFFER, this.posed, gl.DYNAMIC_DRAW);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.buffers.normal);
    gl.bufferData(gl.ARRAY_BUFFER, this.normals, gl.DYNAMIC_DRAW);
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.indexBuffer);
    gl.drawElements(gl.TRIANGLES, face.triangles.length, gl.UNSIGNED_INT, 0);
    const context = this.overlay.getContext("2d");
    context.clearRect(0, 0, PREVIEW_SIZE, PREVIEW_SIZE);
    if (!landmarks) return;
    context.fillStyle = "#3cf06e";
    for (const [u, v] of projectPoints(this.posed, face.header.landmark_ids, face.header.camera, PREVIEW_SIZE)) {
      context.beginPath();
      context.arc(u, v, 1.8, 0, 2 * Math.PI);
      context.fill();
    }
  }

  dispose() {
    this.gl?.getExtension("WEBGL_lose_context")?.loseContext();
  }
}

app.registerExtension({
  name: "TalkingFace.FaceEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const spec = PREVIEWS[nodeData.name];
    if (!spec) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const preview = new FacePreview(this, spec);
      this.talkingfacePreview = preview;
      const widget = this.addDOMWidget("face_preview", "talkingface_face_preview", preview.element, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => PREVIEW_SIZE + 24,
      });
      widget.serialize = false;
      for (const slider of this.widgets ?? []) {
        if (slider === widget) continue;
        const callback = slider.callback;
        slider.callback = function () {
          const value = callback?.apply(this, arguments);
          preview.update();
          return value;
        };
      }
      this.setSize([Math.max(this.size[0], PREVIEW_SIZE + 40), this.computeSize()[1]]);
      requestAnimationFrame(() => preview.update());
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const shown = message?.talkingface_emotion?.[0];
      if (shown) {
        this.talkingfaceEmotion = shown;
        this.talkingfacePreview?.update();
      }
    };
    // Values set without a callback (workflow load, links, another model in Load 3DMM, Text Emotion's
    // intensity) show on the next frame.
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function () {
      const result = onDrawForeground?.apply(this, arguments);
      this.talkingfacePreview?.update();
      return result;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.talkingfacePreview?.dispose();
      return onRemoved?.apply(this, arguments);
    };
  },
});
