// The pkcs11js module's type and an object handle, named once for the PKCS#11 custody's files.

import type * as Pkcs11Types from "pkcs11js";

export type P11 = typeof Pkcs11Types;
export type Handle = Buffer;
