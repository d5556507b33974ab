/**
 * Errors raised on bad input. Every message names where the problem is (file, and field or
 * tensor), what was expected and what was found, so a user can fix the input without reading code.
 */

/** Details carried by a {@link PeftError}; all optional except the message parts a caller knows. */
export interface ErrorDetails {
  /** File (or directory) the bad input came from. */
  file?: string;
  /** Field, tensor name, JSON key or `line N` inside the file. */
  field?: string;
  /** What a valid input would have. */
  expected?: string;
  /** What the input has instead. */
  found?: string;
}

/**
 * An error caused by the user's input (a file, a flag, a request), as opposed to a bug.
 * The message reads `file: field: problem (expected X, found Y)`.
 */
export class PeftError extends Error {
  readonly file?: string;
  readonly field?: string;
  readonly expected?: string;
  readonly found?: string;

  constructor(problem: string, details: ErrorDetails = {}) {
    super(formatMessage(problem, details));
    this.name = 'PeftError';
    this.file = details.file;
    this.field = details.field;
    this.expected = details.expected;
    this.found = details.found;
  }
}

function formatMessage(problem: string, d: ErrorDetails): string {
  const where = [d.file, d.field].filter((s) => s !== undefined && s !== '').join(': ');
  const parts: string[] = [];
  if (d.expected !== undefined) parts.push(`expected ${d.expected}`);
  if (d.found !== undefined) parts.push(`found ${d.found}`);
  const tail = parts.length > 0 ? ` (${parts.join(', ')})` : '';
  return `${where ? where + ': ' : ''}${problem}${tail}`;
}
