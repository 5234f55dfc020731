/** Upload ids an uploader proposes (tus creation-with-upload that stays resumable); no dependencies: the one-file uploader imports it. */
/**
 * Request header by which an uploader proposes the id of the upload its POST creates (32 lowercase hex digits, what
 * the relay would draw itself). Knowing its URL before the POST is answered, the uploader can send the bytes on the
 * creating POST (tus creation-with-upload: a round trip less per upload) and still resume them after a cut that
 * loses the answer: HEAD at that URL gives the offset, 404 says to create it again. An id that exists is refused
 * (409): an upload is never taken over or truncated by a second POST. Answers of the tus endpoint say the relay
 * takes it (CLIENT_UPLOAD_ID_OFFER).
 */
export const CLIENT_UPLOAD_ID_HEADER = "X-Dicom-Relay-Upload-Id";
/** Response header on the tus endpoint: the relay takes CLIENT_UPLOAD_ID_HEADER. */
export const CLIENT_UPLOAD_ID_OFFER = "X-Dicom-Relay-Client-Upload-Ids";
/** what a proposed id must look like */
export const CLIENT_UPLOAD_ID = /^[0-9a-f]{32}$/;
