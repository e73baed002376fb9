// A scenario file picked in the browser, read into the document the control plane takes
// inline (`POST /_sim/sandboxes {"scenario": ...}`, `POST /_sim/scenario {"data": ...}`).
// Read here: JSON, and the JSON lines `cockpit-api snapshot` writes (backends/scenario.py
// `_json_lines` reads the same lines on the server). Not here: YAML in general, which would
// take a vendored parser; such a file gets a message naming the ways that do read it.
/** A file this page cannot read, with what to do instead. */
export class ScenarioFileError extends Error {
}
const TOP = /^([a-z_]+):(?: (.*))?$/;
/** The snapshot format: `key: JSON` lines and, under a bare `key:`, `  - {JSON}` items; `#` comments. */
function jsonLines(text) {
    const data = {};
    let items = null;
    try {
        for (const line of text.split(/\r?\n/)) {
            if (!line || line.startsWith("#"))
                continue;
            if (line.startsWith("  - {")) {
                if (items === null)
                    return null;
                items.push(JSON.parse(line.slice(4)));
                continue;
            }
            const m = TOP.exec(line);
            if (m === null)
                return null;
            if (m[2] === undefined) {
                items = [];
                data[m[1]] = items;
            }
            else {
                data[m[1]] = JSON.parse(m[2]);
                items = null;
            }
        }
    }
    catch {
        return null; // not JSON after all: a YAML file that starts like a snapshot
    }
    return data;
}
export function readScenario(fileName, text) {
    let data = null;
    if (fileName.toLowerCase().endsWith(".json") || text.trimStart().startsWith("{")) {
        try {
            data = JSON.parse(text);
        }
        catch (err) {
            throw new ScenarioFileError(`${fileName} is not valid JSON (${err instanceof Error ? err.message : String(err)}).`);
        }
    }
    else {
        data = jsonLines(text);
    }
    if (data === null || typeof data !== "object" || Array.isArray(data) || Object.keys(data).length === 0) {
        throw new ScenarioFileError(`${fileName}: the browser reads only files made by cockpit-api snapshot and JSON ` +
            "scenarios; for a YAML scenario use `cockpit-api serve --scenario FILE`, or send it as JSON.");
    }
    return data;
}
