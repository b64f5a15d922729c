// The face editor's geometry, free of the browser so node's test runner checks it
// (tests/js/face_preview_math.test.mjs). Conventions are the pack's Python ones:
// world x to the subject's left (image right), y up, z towards the camera at z = distance;
// R = Rz·Ry·Rx from (pitch, yaw, roll) = rotation about (x, y, z); pixels from the top-left.

export const ANGLE_WIDGETS = ["pitch", "yaw", "roll"];
const LITTLE_ENDIAN = true;
const ARRAY_TYPES = { float32: Float32Array, uint32: Uint32Array };

// Decodes nodes/face_preview.py's message: uint32 header length, JSON header, 4-byte aligned arrays.
export function parseFacePreview(buffer) {
  const view = new DataView(buffer);
  const headerLength = view.getUint32(0, LITTLE_ENDIAN);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headerLength)));
  const start = 4 + headerLength;
  const arrays = {};
  for (const [name, spec] of Object.entries(header.arrays)) {
    const Type = ARRAY_TYPES[spec.dtype];
    if (!Type) throw new Error(`face preview: unknown array type ${spec.dtype} for ${name}`);
    arrays[name] = new Type(buffer, start + spec.offset, spec.length);
  }
  const named = (prefix, names) => Object.fromEntries((names ?? []).map((name) => [name, arrays[`${prefix}:${name}`]]));
  return {
    header, meanShape: arrays.mean_shape, albedo: arrays.albedo, triangles: arrays.triangles,
    sliderOffsets: named("slider", header.sliders), emotionOffsets: named("emotion", header.emotions),
  };
}

// Row-major 3x3 R = Rz·Ry·Rx for angles in degrees, as pipelines/morphable/model.rotation_matrices.
export function rotationMatrix(pitchDegrees, yawDegrees, rollDegrees) {
  const [x, y, z] = [pitchDegrees, yawDegrees, rollDegrees].map((a) => (a * Math.PI) / 180);
  const [cx, sx, cy, sy, cz, sz] = [Math.cos(x), Math.sin(x), Math.cos(y), Math.sin(y), Math.cos(z), Math.sin(z)];
  return [
    cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx,
    sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx,
    -sy, cy * sx, cy * cx,
  ];
}

// mean + Σ amount · offset, the mesh Edit Expression and Pose gives the average face.
export function composeShape(meanShape, sliderOffsets, amounts, out = new Float32Array(meanShape.length)) {
  out.set(meanShape);
  for (const [name, amount] of Object.entries(amounts)) {
    const offsets = sliderOffsets[name];
    if (!amount || !offsets) continue;
    for (let i = 0; i < out.length; i++) out[i] += amount * offsets[i];
  }
  return out;
}

// R·v for every vertex of a flat [x0, y0, z0, x1, ...] array.
export function rotateVertices(vertices, rotation, out = new Float32Array(vertices.length)) {
  const [a, b, c, d, e, f, g, h, k] = rotation;
  for (let i = 0; i < vertices.length; i += 3) {
    const x = vertices[i], y = vertices[i + 1], z = vertices[i + 2];
    out[i] = a * x + b * y + c * z;
    out[i + 1] = d * x + e * y + f * z;
    out[i + 2] = g * x + h * y + k * z;
  }
  return out;
}

// Area-weighted unit vertex normals, outward for counter-clockwise triangles (as the Python model's).
export function vertexNormals(vertices, triangles, out = new Float32Array(vertices.length)) {
  out.fill(0);
  for (let t = 0; t < triangles.length; t += 3) {
    const ia = 3 * triangles[t], ib = 3 * triangles[t + 1], ic = 3 * triangles[t + 2];
    const ux = vertices[ib] - vertices[ia], uy = vertices[ib + 1] - vertices[ia + 1], uz = vertices[ib + 2] - vertices[ia + 2];
    const wx = vertices[ic] - vertices[ia], wy = vertices[ic + 1] - vertices[ia + 1], wz = vertices[ic + 2] - vertices[ia + 2];
    const nx = uy * wz - uz * wy, ny = uz * wx - ux * wz, nz = ux * wy - uy * wx;
    for (const i of [ia, ib, ic]) {
      out[i] += nx;
      out[i + 1] += ny;
      out[i + 2] += nz;
    }
  }
  for (let i = 0; i < out.length; i += 3) {
    const length = Math.hypot(out[i], out[i + 1], out[i + 2]) || 1;
    out[i] /= length;
    out[i + 1] /= length;
    out[i + 2] /= length;
  }
  return out;
}

// Pixel positions [[u, v], ...] of the given vertex ids through the Deep3DFaceRecon camera at `size` px
// (pipelines/morphable/camera.PerspectiveCamera.deep3d(size).project).
export function projectPoints(vertices, ids, camera, size) {
  const focal = (camera.focal * size) / camera.image_size;
  const center = size / 2;
  return Array.from(ids, (id) => {
    const depth = camera.distance - vertices[3 * id + 2];
    return [(focal * vertices[3 * id]) / depth + center, center - (focal * vertices[3 * id + 1]) / depth];
  });
}

// Column-major 4x4 matrix taking world points to WebGL clip space through the same camera, so the
// preview frames the face exactly as Render 3DMM Target does.
export function projectionMatrix(camera, near = 1, far = 2 * camera.distance) {
  const scale = (2 * camera.focal) / camera.image_size;
  const a = -(far + near) / (far - near);
  const b = (-2 * far * near) / (far - near);
  return new Float32Array([
    scale, 0, 0, 0,
    0, scale, 0, 0,
    0, 0, a, -1,
    0, 0, b - a * camera.distance, camera.distance,
  ]);
}

// What the node's widgets ask for: angles in degrees and slider amounts (missing widgets count 0).
export function editorState(widgets, sliderNames) {
  const value = (name) => Number(widgets?.find((w) => w.name === name)?.value ?? 0) || 0;
  const amounts = {};
  for (const name of sliderNames) amounts[name] = value(name);
  return { angles: ANGLE_WIDGETS.map(value), amounts };
}

// Apply Emotion's amounts: intensity · weight per emotion, as pipelines/emotion/directions.offset.
export function emotionAmounts(emotions, weights, intensity) {
  return Object.fromEntries(emotions.map((name, k) => [name, intensity * (weights[k] ?? 0)]));
}

// "happy 0.60, fear 0.20": the strongest weights, as Text Emotion's weights output writes them.
export function describeEmotion(emotions, weights, count = 3) {
  return emotions
    .map((name, k) => [name, weights[k] ?? 0])
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .filter(([, weight]) => weight >= 0.005)
    .map(([name, weight]) => `${name} ${weight.toFixed(2)}`)
    .join(", ");
}

// A key that changes whenever the drawn face would.
export function stateKey(modelName, state, landmarks) {
  return JSON.stringify([modelName, state.angles, state.amounts, Boolean(landmarks)]);
}
