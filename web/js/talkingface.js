// Shows where Save Coefficients and Export Mesh wrote their files, on the node itself, after each run.
import { app } from "../../../scripts/app.js";

const SAVING_NODES = new Set(["TalkingFaceSaveCoefficients", "TalkingFaceExportMesh"]);
const WIDGET_NAME = "saved_to";

app.registerExtension({
  name: "TalkingFace.SavedFileNotice",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SAVING_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      let widget = this.widgets?.find((w) => w.name === WIDGET_NAME);
      if (!widget) {
        // Not serialized: the notice is output, so saved workflows keep their widget order.
        widget = this.addWidget("text", WIDGET_NAME, "", () => {}, { serialize: false });
        widget.serialize = false;
      }
      widget.value = text;
      this.setDirtyCanvas(true, false);
    };
  },
});
