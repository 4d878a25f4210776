package org.qwenedge.demo.core;

import java.io.IOException;
import java.io.Reader;
import java.io.UncheckedIOException;

/**
 * A streaming JSON reader (RFC 8259, strict): one token at a time from a character stream.
 *
 * <p>Streaming matters on a phone: a Qwen {@code tokenizer.json} is about 33 MB, and the self-check
 * needs a handful of its entries, so {@link TokenDecoder} scans it without building a tree. Small
 * files (manifest, self-check) go through {@link Json#parse}, which is built on this reader.
 *
 * <p>Not here: a tree model ({@link Json}) or typed access with error paths ({@link Node}).
 */
public final class JsonReader implements AutoCloseable {
  /** What the next token is. */
  public enum Kind { BEGIN_OBJECT, END_OBJECT, BEGIN_ARRAY, END_ARRAY, NAME, STRING, NUMBER, BOOLEAN, NULL, END_DOCUMENT }

  private static final int MAX_DEPTH = 512;
  // Where the reader stands in each open container (and the document itself, at depth 0).
  private static final int EMPTY_DOCUMENT = 0, NONEMPTY_DOCUMENT = 1, EMPTY_ARRAY = 2, NONEMPTY_ARRAY = 3;
  private static final int EMPTY_OBJECT = 4, NONEMPTY_OBJECT = 5, AFTER_NAME = 6;

  private final Reader in;
  private final char[] buffer = new char[8192];
  private int pos, limit;
  private int line = 1, column = 1;
  private final int[] stack = new int[MAX_DEPTH + 1];
  private int depth;
  private Kind peeked;

  public JsonReader(Reader in) {
    this.in = in;
    stack[0] = EMPTY_DOCUMENT;
  }

  /** The kind of the next token, without consuming it. */
  public Kind peek() {
    if (peeked != null) return peeked;
    int context = stack[depth];
    int c = skipSpace();
    switch (context) {
      case EMPTY_DOCUMENT:
        stack[depth] = NONEMPTY_DOCUMENT;
        return peeked = valueKind(c);
      case NONEMPTY_DOCUMENT:
        if (c != -1) throw error("expected the end of the document", c);
        return peeked = Kind.END_DOCUMENT;
      case EMPTY_ARRAY:
        if (c == ']') return peeked = Kind.END_ARRAY;
        stack[depth] = NONEMPTY_ARRAY;
        return peeked = valueKind(c);
      case NONEMPTY_ARRAY:
        if (c == ']') return peeked = Kind.END_ARRAY;
        expect(c, ',', "',' or ']'");
        return peeked = valueKind(skipSpace());
      case EMPTY_OBJECT:
        if (c == '}') return peeked = Kind.END_OBJECT;
        if (c != '"') throw error("expected a quoted name or '}'", c);
        return peeked = Kind.NAME;
      case NONEMPTY_OBJECT:
        if (c == '}') return peeked = Kind.END_OBJECT;
        expect(c, ',', "',' or '}'");
        if (skipSpace() != '"') throw error("expected a quoted name", current());
        return peeked = Kind.NAME;
      default: // AFTER_NAME
        expect(c, ':', "':'");
        stack[depth] = NONEMPTY_OBJECT;
        return peeked = valueKind(skipSpace());
    }
  }

  public void beginObject() { open(Kind.BEGIN_OBJECT, EMPTY_OBJECT); }

  public void endObject() { close(Kind.END_OBJECT); }

  public void beginArray() { open(Kind.BEGIN_ARRAY, EMPTY_ARRAY); }

  public void endArray() { close(Kind.END_ARRAY); }

  /** True while the current object or array has more members. */
  public boolean hasNext() {
    Kind kind = peek();
    return kind != Kind.END_OBJECT && kind != Kind.END_ARRAY && kind != Kind.END_DOCUMENT;
  }

  public String nextName() {
    consume(Kind.NAME);
    String name = readString();
    stack[depth] = AFTER_NAME;
    return name;
  }

  public String nextString() {
    consume(Kind.STRING);
    return readString();
  }

  public boolean nextBoolean() {
    consume(Kind.BOOLEAN);
    boolean value = current() == 't';
    literal(value ? "true" : "false");
    return value;
  }

  public void nextNull() {
    consume(Kind.NULL);
    literal("null");
  }

  /** A number: a Long when it is written as an integer that fits, else a Double. */
  public Number nextNumber() {
    consume(Kind.NUMBER);
    StringBuilder text = new StringBuilder();
    boolean integral = true;
    if (current() == '-') text.append((char) take());
    if (current() == '0') {
      text.append((char) take());
    } else {
      digits(text);
    }
    if (current() == '.') {
      integral = false;
      text.append((char) take());
      digits(text);
    }
    if (current() == 'e' || current() == 'E') {
      integral = false;
      text.append((char) take());
      if (current() == '+' || current() == '-') text.append((char) take());
      digits(text);
    }
    if (integral) {
      try {
        return Long.parseLong(text.toString());
      } catch (NumberFormatException tooLarge) {
        // Falls through to a double, as JSON numbers carry no integer width.
      }
    }
    return Double.parseDouble(text.toString());
  }

  /** Skip the next value, however deeply nested. */
  public void skipValue() {
    int start = depth;
    do {
      switch (peek()) {
        case BEGIN_OBJECT: beginObject(); break;
        case BEGIN_ARRAY: beginArray(); break;
        case END_OBJECT: endObject(); break;
        case END_ARRAY: endArray(); break;
        case NAME: nextName(); break;
        case STRING: nextString(); break;
        case NUMBER: nextNumber(); break;
        case BOOLEAN: nextBoolean(); break;
        case NULL: nextNull(); break;
        default: throw error("expected a value", -1);
      }
    } while (depth > start);
  }

  /** Where the reader stands, for error messages of callers. */
  public String location() {
    return "line " + line + ", column " + column;
  }

  @Override
  public void close() {
    try {
      in.close();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  // ---------------------------------------------------------------------------------------------

  private Kind valueKind(int c) {
    switch (c) {
      case '{': return Kind.BEGIN_OBJECT;
      case '[': return Kind.BEGIN_ARRAY;
      case '"': return Kind.STRING;
      case 't': case 'f': return Kind.BOOLEAN;
      case 'n': return Kind.NULL;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return Kind.NUMBER;
        throw error("expected a value", c);
    }
  }

  private void open(Kind kind, int context) {
    consume(kind);
    take();
    if (depth == MAX_DEPTH) throw error("nesting deeper than " + MAX_DEPTH, -1);
    stack[++depth] = context;
  }

  private void close(Kind kind) {
    consume(kind);
    take();
    depth--;
  }

  private void consume(Kind kind) {
    Kind next = peek();
    if (next != kind) throw new JsonException("expected " + kind + " but found " + next + " at " + location());
    peeked = null;
  }

  private String readString() {
    take(); // the opening quote
    StringBuilder out = new StringBuilder();
    while (true) {
      int c = take();
      if (c == '"') return out.toString();
      if (c == -1) throw error("unterminated string", c);
      if (c < 0x20) throw error("control character in a string (escape it)", c);
      if (c != '\\') {
        out.append((char) c);
        continue;
      }
      int e = take();
      switch (e) {
        case '"': case '\\': case '/': out.append((char) e); break;
        case 'b': out.append('\b'); break;
        case 'f': out.append('\f'); break;
        case 'n': out.append('\n'); break;
        case 'r': out.append('\r'); break;
        case 't': out.append('\t'); break;
        case 'u': out.append(hex4()); break;
        default: throw error("invalid escape '\\" + (e == -1 ? "" : String.valueOf((char) e)) + "'", e);
      }
    }
  }

  private char hex4() {
    int value = 0;
    for (int i = 0; i < 4; i++) {
      int c = take();
      int digit = Character.digit(c < 0 ? 0 : c, 16);
      if (c < 0 || digit < 0) throw error("invalid \\u escape", c);
      value = value * 16 + digit;
    }
    return (char) value;
  }

  private void digits(StringBuilder text) {
    if (current() < '0' || current() > '9') throw error("expected a digit", current());
    while (current() >= '0' && current() <= '9') text.append((char) take());
  }

  private void literal(String word) {
    for (int i = 0; i < word.length(); i++) {
      if (take() != word.charAt(i)) throw error("invalid literal (expected '" + word + "')", -1);
    }
  }

  private void expect(int c, char wanted, String what) {
    if (c != wanted) throw error("expected " + what, c);
    take();
  }

  private int skipSpace() {
    int c = current();
    while (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      take();
      c = current();
    }
    return c;
  }

  private int current() {
    if (pos == limit && !fill()) return -1;
    return buffer[pos];
  }

  private int take() {
    int c = current();
    if (c == -1) return -1;
    pos++;
    if (c == '\n') {
      line++;
      column = 1;
    } else {
      column++;
    }
    return c;
  }

  private boolean fill() {
    try {
      int n = in.read(buffer, 0, buffer.length);
      if (n <= 0) return false;
      pos = 0;
      limit = n;
      return true;
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  private JsonException error(String what, int c) {
    String found = c == -1 ? "end of input" : "'" + (char) c + "'";
    return new JsonException(what + " at " + location() + ", found " + found);
  }
}
