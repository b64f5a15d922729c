// node --test tests/js/*.test.mjs : the face editor's geometry against the pack's Python conventions.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  composeShape, describeEmotion, editorState, emotionAmounts, parseFacePreview, projectionMatrix, projectPoints, rotateVertices, rotationMatrix,
  stateKey, vertexNormals,
} from "../../web/js/face_preview_math.js";

const CAMERA = { focal: 1015, image_size: 224, distance: 10 };
const close = (actual, expected, tolerance = 1e-5) =>
  assert.ok(Math.abs(actual - expected) <= tolerance, `${actual} != ${expected}`);

// The message layout of nodes/face_preview.py, built here by hand.
function message(header, arrays) {
  const specs = {};
  let offset = 0;
  for (const [name, array] of Object.entries(arrays)) {
    specs[name] = { offset, length: array.length, dtype: array instanceof Uint32Array ? "uint32" : "float32" };
    offset += array.byteLength;
  }
  let text = JSON.stringify({ ...header, arrays: specs });
  text += " ".repeat((4 - (text.length % 4)) % 4);
  const bytes = new Uint8Array(4 + text.length + offset);
  new DataView(bytes.buffer).setUint32(0, text.length, true);
  bytes.set(new TextEncoder().encode(text), 4);
  let at = 4 + text.length;
  for (const array of Object.values(arrays)) {
    bytes.set(new Uint8Array(array.buffer), at);
    at += array.byteLength;
  }
  return bytes.buffer;
}

test("parses the route's binary message", () => {
  const buffer = message(
    { sliders: ["smile"], landmark_ids: [0] },
    {
      mean_shape: new Float32Array([0, 1, 2, 3, 4, 5, 6, 7, 8]),
      albedo: new Float32Array(9).fill(0.5),
      triangles: new Uint32Array([0, 1, 2]),
      "slider:smile": new Float32Array([1, 0, 0, 0, 0, 0, 0, 0, -1]),
    },
  );
  const face = parseFacePreview(buffer);
  assert.deepEqual(Array.from(face.triangles), [0, 1, 2]);
  assert.deepEqual(Array.from(face.meanShape), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(face.sliderOffsets.smile[8], -1);
  assert.deepEqual(face.emotionOffsets, {}, "no emotions asked for, none sent");
  assert.equal(face.header.landmark_ids[0], 0);
});

test("rotation is Rz·Ry·Rx in degrees, like rotation_matrices", () => {
  const [a, , , d, , , g] = rotationMatrix(0, 90, 0);
  close(a, 0);
  close(g, -1); // yaw +90°: the x axis turns to -z
  const tilt = rotationMatrix(0, 0, 90);
  close(tilt[3], 1); // roll +90°: x turns to +y
  close(d, 0);
  const r = rotationMatrix(20, -35, 10);
  // pipelines/morphable/model.rotation_matrices(radians([20, -35, 10])), printed by Python.
  const python = [0.806707, -0.35637, -0.471406, 0.142244, 0.891351, -0.430418, 0.573576, 0.280166, 0.769751];
  python.forEach((value, i) => close(r[i], value, 1e-6));
  // Orthonormal with determinant 1.
  const rows = [r.slice(0, 3), r.slice(3, 6), r.slice(6, 9)];
  for (let i = 0; i < 3; i++)
    for (let j = 0; j < 3; j++) close(rows[i].reduce((s, v, k) => s + v * rows[j][k], 0), i === j ? 1 : 0);
  // Rx first: pitch alone moves +y towards +z (x rotation by +θ).
  const pitch = rotateVertices(new Float32Array([0, 1, 0]), rotationMatrix(30, 0, 0));
  close(pitch[1], Math.cos(Math.PI / 6));
  close(pitch[2], Math.sin(Math.PI / 6));
});

test("sliders add their offsets to the mean shape", () => {
  const mean = new Float32Array([1, 1, 1]);
  const shape = composeShape(mean, { smile: new Float32Array([1, 0, 0]), blink: new Float32Array([0, 2, 0]) },
    { smile: 0.5, blink: -1, unknown: 3 });
  assert.deepEqual(Array.from(shape), [1.5, -1, 1]);
  assert.deepEqual(Array.from(mean), [1, 1, 1], "the mean shape is not modified");
});

test("normals point out of counter-clockwise triangles", () => {
  const vertices = new Float32Array([0, 0, 0, 1, 0, 0, 0, 1, 0]);
  const normals = vertexNormals(vertices, new Uint32Array([0, 1, 2]));
  assert.deepEqual(Array.from(normals), [0, 0, 1, 0, 0, 1, 0, 0, 1]);
});

test("landmarks project through the Deep3DFaceRecon camera and agree with the WebGL matrix", () => {
  const vertices = new Float32Array([0, 0, 0, 0.5, -0.25, 1]);
  const [centre, point] = projectPoints(vertices, [0, 1], CAMERA, 224);
  assert.deepEqual(centre, [112, 112]);
  close(point[0], (1015 * 0.5) / 9 + 112, 1e-4); // u = f x / (d - z) + c
  close(point[1], 112 + (1015 * 0.25) / 9, 1e-4); // v = c - f y / (d - z)
  const m = projectionMatrix(CAMERA);
  const [x, y, z] = [0.5, -0.25, 1];
  const clip = [0, 1, 2, 3].map((row) => m[row] * x + m[4 + row] * y + m[8 + row] * z + m[12 + row]);
  const ndc = clip.map((v) => v / clip[3]);
  close(((ndc[0] + 1) / 2) * 224, point[0], 1e-3);
  close(((1 - ndc[1]) / 2) * 224, point[1], 1e-3);
  assert.ok(ndc[2] > -1 && ndc[2] < 1, "the face lies between the near and far planes");
});

test("editor state reads the node's widgets and keys every change", () => {
  const widgets = [{ name: "yaw", value: 15 }, { name: "smile", value: 0.5 }, { name: "coefficients", value: "x" }];
  const state = editorState(widgets, ["smile", "blink"]);
  assert.deepEqual(state, { angles: [0, 15, 0], amounts: { smile: 0.5, blink: 0 } });
  const before = stateKey("demo", state, false);
  widgets[1].value = 0.55;
  assert.notEqual(stateKey("demo", editorState(widgets, ["smile", "blink"]), false), before);
  assert.notEqual(stateKey("demo", state, true), before);
});

test("emotion amounts scale the weights by the intensity and the caption names the strongest", () => {
  const emotions = ["neutral", "happy", "sad"];
  const amounts = emotionAmounts(emotions, [0.2, 0.7, 0.1], 1.5);
  assert.deepEqual(Object.keys(amounts), emotions);
  [0.3, 1.05, 0.15].forEach((expected, k) => close(amounts[emotions[k]], expected, 1e-9));
  assert.equal(describeEmotion(emotions, [0.2, 0.7, 0.1], 2), "happy 0.70, neutral 0.20");
  assert.equal(describeEmotion(emotions, [0, 1, 0]), "happy 1.00");
});
