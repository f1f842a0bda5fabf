// Step 420 of seed 001 embodiment 2 in a deployment: "the user gives the personal data directly to the
// certification issuing center" — here, the user record an operator registered (POST /users), whose personal data
// the center (center.ts, step 423) compares with what was entered at the key generation device and signed into the
// request. The user record is the registration; the device's entry must equal it field by field.
//
// Only the certificate-subject fields of the record count (name.ts SUBJECT_FIELDS; `name` is read as commonName when
// commonName is absent, as the issuer's own subjects do). A record whose fields cannot form a subject (too long, a
// non-printable country...) is treated as no registration: the center refuses naming "personal-data".
//
// Never: logs or returns values in errors; callers see field names only.

import { SUBJECT_FIELDS, validateSubject, type SubjectName } from "../ca/name.ts";
import type { RegistrationLookup } from "./center.ts";

/** Where user records come from: the issuer's Store, or anything with `getUser`. */
export interface UserRecords {
  getUser(id: string): Promise<{ personalData: Record<string, unknown> } | undefined>;
}

/** The subject a user record registers: its subject fields, strings only (organizationalUnit may be a list). */
export function registeredSubject(personalData: Record<string, unknown>): SubjectName {
  const s: Record<string, string | string[]> = {};
  for (const f of SUBJECT_FIELDS) {
    const v = personalData[f];
    if (typeof v === "string") s[f] = v;
    else if (f === "organizationalUnit" && Array.isArray(v) && v.every((x) => typeof x === "string")) s[f] = [...(v as string[])];
  }
  if (s.commonName === undefined && typeof personalData.name === "string") s.commonName = personalData.name;
  return s as SubjectName;
}

/** The center's registrations (center.ts RegistrationLookup) read from the issuer's user records. */
export class UserRegistrations implements RegistrationLookup {
  constructor(private readonly users: UserRecords) {}

  async personalData(applicantId: string): Promise<SubjectName | undefined> {
    const user = await this.users.getUser(applicantId);
    if (!user) return undefined;
    const subject = registeredSubject(user.personalData);
    try {
      validateSubject(subject);
    } catch {
      return undefined;
    }
    return subject;
  }
}
