// Shows where Save Coefficients wrote its file, on the node itself, after each run.
import { app } from "../../scripts/app.js";

const SAVE_NODE = "TalkingFaceSaveCoefficients";
const WIDGET_NAME = "saved_to";

app.registerExtension({
  name: "TalkingFace.SavedFileNotice",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== SAVE_NODE) return;
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
