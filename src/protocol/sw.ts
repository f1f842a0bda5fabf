// ISO/IEC 7816-4 status words used by the card runtime and its applets.
// Applet code throws CardError(SW.X); the runtime turns it into a response APDU.
// Nothing but CardError (and the fault-injection PowerLoss) is ever meant to leave an applet.

export const SW = {
  OK: 0x9000,
  BYTES_REMAINING: 0x6100, // 61xx: xx more bytes with GET RESPONSE
  WARN_TERMINATED: 0x6285, // selected file in termination state
  VERIFY_FAILED: 0x63c0, // 63Cx: x tries left
  MEMORY_FAILURE: 0x6581,
  WRONG_LENGTH: 0x6700,
  LOGICAL_CHANNEL_NOT_SUPPORTED: 0x6881,
  SM_NOT_SUPPORTED: 0x6882,
  LAST_COMMAND_OF_CHAIN_EXPECTED: 0x6883,
  CHAINING_NOT_SUPPORTED: 0x6884,
  SECURITY_STATUS_NOT_SATISFIED: 0x6982,
  AUTH_METHOD_BLOCKED: 0x6983,
  REFERENCE_DATA_NOT_USABLE: 0x6984,
  CONDITIONS_NOT_SATISFIED: 0x6985,
  COMMAND_NOT_ALLOWED: 0x6986,
  SM_DATA_OBJECTS_MISSING: 0x6987,
  SM_DATA_OBJECTS_INCORRECT: 0x6988,
  WRONG_DATA: 0x6a80,
  FUNC_NOT_SUPPORTED: 0x6a81,
  FILE_NOT_FOUND: 0x6a82,
  RECORD_NOT_FOUND: 0x6a83,
  NOT_ENOUGH_MEMORY: 0x6a84,
  INCORRECT_P1P2: 0x6a86,
  REFERENCE_NOT_FOUND: 0x6a88,
  WRONG_P1P2: 0x6b00,
  WRONG_LE: 0x6c00, // 6Cxx: exact length is xx
  INS_NOT_SUPPORTED: 0x6d00,
  CLA_NOT_SUPPORTED: 0x6e00,
  UNKNOWN: 0x6f00,
} as const;

export type StatusWord = number;

/** Thrown inside the card to answer a command with a status word and no data. */
export class CardError extends Error {
  constructor(
    readonly sw: StatusWord,
    message?: string,
  ) {
    super(message ?? `card status ${swHex(sw)}`);
    this.name = "CardError";
  }
}

export function swHex(sw: number): string {
  return sw.toString(16).toUpperCase().padStart(4, "0");
}

/** Throws CardError(sw) unless cond holds. */
export function check(cond: unknown, sw: StatusWord, message?: string): asserts cond {
  if (!cond) throw new CardError(sw, message);
}
