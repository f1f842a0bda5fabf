// What an applet sees of the card: the interfaces live with the runtime that calls them (runtime.ts), so the two
// modules do not import each other; applets import them from here.

export type { Applet, AppletContext, SecureChannel, SecureChannelFactory } from "./runtime.ts";
