// Host-side view of a card: send a command APDU, get the response APDU. Everything above the card (issuing
// service, demo, CLI) talks through a CardTransport so the same code drives an in-process card or a card
// reached through real PC/SC middleware.

export interface CardTransport {
  /** Sends one command APDU and resolves with the response APDU (data || SW1 SW2). */
  transmit(apdu: Uint8Array): Promise<Uint8Array>;
  /** Releases the transport. Further transmits reject. Idempotent. */
  close(): Promise<void>;
}

/** What a transport needs of a card (an ICC): the virtual card's CardRuntime satisfies it. */
export interface IccLike {
  /** Answer-to-reset bytes. */
  readonly atr: Uint8Array;
  /** Warm reset: answers the ATR. */
  reset(): Uint8Array;
  /** One command APDU in, one response APDU out. */
  transmit(raw: Uint8Array): Uint8Array;
}

export class TransportClosedError extends Error {
  constructor(what = "transport") {
    super(`${what} is closed`);
    this.name = "TransportClosedError";
  }
}

export interface InProcessTransportOptions {
  /** Close the card (its EEPROM file) when the transport closes. Default false: the caller owns the card. */
  closeCard?: boolean;
}

/**
 * A card in this process. Command and response bytes are copied, so neither side can alias the other's buffers.
 * Errors thrown by the card (only PowerLoss, under fault injection) reject the transmit.
 */
export class InProcessTransport implements CardTransport {
  private closed = false;

  constructor(
    private readonly card: IccLike & { close?: () => void },
    private readonly opts: InProcessTransportOptions = {},
  ) {}

  get atr(): Uint8Array {
    return Uint8Array.from(this.card.atr);
  }

  async transmit(apdu: Uint8Array): Promise<Uint8Array> {
    if (this.closed) throw new TransportClosedError("in-process transport");
    return Uint8Array.from(this.card.transmit(Uint8Array.from(apdu)));
  }

  /** Warm reset of the card; resolves with its ATR. */
  async reset(): Promise<Uint8Array> {
    if (this.closed) throw new TransportClosedError("in-process transport");
    return Uint8Array.from(this.card.reset());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.opts.closeCard) this.card.close?.();
  }
}
